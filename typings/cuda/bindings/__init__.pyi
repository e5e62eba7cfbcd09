# Stand-in for NVIDIA's cuda-python, an optional runtime library: engines/_cuda.py imports it lazily and
# treats it as `Any`. Read by pyright (stubPath).
from typing import Any

def __getattr__(name: str) -> Any: ...
