# Stand-in for NVIDIA's `tensorrt`, an optional runtime library absent from most machines (and from PyPI in
# any usable form): engines/_trt.py imports it lazily and treats it as `Any`. Read by pyright (stubPath).
from typing import Any

def __getattr__(name: str) -> Any: ...
