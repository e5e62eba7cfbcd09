"""What a TensorRT build is asked to produce, derived without TensorRT: precision, profiles, dtype names.

Everything here is plain Python + onnx + numpy so it can be computed (and tested) on machines where TensorRT
cannot exist; `tensorrt_engine` turns a `BuildPlan` into TensorRT builder calls.

An optimisation profile tells TensorRT the range of shapes each dynamic input will see. Our models are image
models fed by `visionrpc.server.processing.preprocess`, which always produces the manifest's input size, so
only the batch dimension really varies: the profile fixes channels, height and width and spans batch
1..max_batch, tuned ("opt") for batch 1 because unary requests of one image dominate serving traffic.

Example:
    >>> specs = onnx_input_specs(Path("model.onnx"))  # images: float32 (None, 3, None, None)
    >>> profiles = derive_profiles(specs, input_width=640, input_height=640, max_batch=8)
    >>> profiles[0].max
    (8, 3, 640, 640)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .base import EngineError, TensorSpec

__all__ = [
    "BuildPlan",
    "InputProfile",
    "Precision",
    "derive_profiles",
    "numpy_dtype_for_trt",
    "onnx_input_specs",
    "trt_dtype_name_for_numpy",
]


class Precision(enum.Enum):
    """The reduced precision TensorRT may choose kernels in (TensorRT 10's "weakly typed" builder flags)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


# TensorRT DataType member names -> numpy dtype names. Keyed by name, not by the enum object, so the table is
# usable (and testable) without importing tensorrt. TensorRT types without a numpy equivalent (FP8, BF16,
# INT4, FP4) are deliberately absent: an engine exposing them at its I/O boundary is refused with a clear
# error rather than served with a silently wrong reinterpretation of the bytes.
_TRT_TO_NUMPY: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}
_NUMPY_TO_TRT = {numpy_name: trt_name for trt_name, numpy_name in _TRT_TO_NUMPY.items()}
_IMAGE_RANK = 4  # NCHW


def numpy_dtype_for_trt(trt_type: object) -> np.dtype[np.generic]:
    """The numpy dtype of a TensorRT `DataType` (the member, or a name such as "FLOAT" or "DataType.HALF").

    Raises:
        EngineError: a TensorRT type with no numpy equivalent (FP8, BF16, INT4, FP4, ...).
    """
    name = getattr(trt_type, "name", None) or str(trt_type)
    name = name.rsplit(".", 1)[-1].upper()
    numpy_name = _TRT_TO_NUMPY.get(name)
    if numpy_name is None:
        raise EngineError(
            f"TensorRT type {name} has no numpy equivalent; expected one of {sorted(_TRT_TO_NUMPY)}"
        )
    return np.dtype(numpy_name)


def trt_dtype_name_for_numpy(dtype: npt.DTypeLike) -> str:
    """The TensorRT `DataType` member name for a numpy dtype ("float32" -> "FLOAT").

    Raises:
        EngineError: a numpy dtype TensorRT cannot take at an I/O boundary (float64, complex, object, ...).
    """
    name = np.dtype(dtype).name
    trt_name = _NUMPY_TO_TRT.get(name)
    if trt_name is None:
        raise EngineError(
            f"numpy dtype {name} has no TensorRT equivalent; expected one of {sorted(_NUMPY_TO_TRT)}"
        )
    return trt_name


@dataclass(frozen=True, slots=True)
class InputProfile:
    """One input's shape range in an optimisation profile: min <= opt <= max, dimension by dimension."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)) or not self.min:
            raise ValueError(
                f"input {self.name!r}: expected min, opt and max of one rank, "
                f"got {self.min}, {self.opt}, {self.max}"
            )
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 1 <= lo <= mid <= hi:
                raise ValueError(
                    f"input {self.name!r}: expected 1 <= min <= opt <= max per dimension, "
                    f"got {self.min}, {self.opt}, {self.max}"
                )

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    def to_list(self) -> list[object]:
        """A JSON-friendly form, used in cache keys."""
        return [self.name, list(self.min), list(self.opt), list(self.max)]


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """Everything `build_engine` needs besides the ONNX file.

    Attributes:
        profiles: one per network input (see `derive_profiles`).
        precision: fp16 (the default where the GPU has fast FP16; falls back to fp32 where it has not), fp32,
            or int8 (needs a calibration cache or a quantised, Q/DQ, model).
        workspace_bytes: the builder's scratch memory limit (tactics needing more are skipped).
        dla_core: the Jetson DLA core to run on (-1: the GPU). Layers DLA cannot run fall back to the GPU.
        timing_cache: where the builder's timing cache persists across builds (None: not persisted).
        calibration_cache: an INT8 calibration cache produced elsewhere (TensorRT 10 only; 11 removed
            implicit INT8 calibration).
    """

    profiles: tuple[InputProfile, ...]
    precision: Precision = Precision.FP16
    workspace_bytes: int = 1 << 30
    dla_core: int = -1
    timing_cache: Path | None = None
    calibration_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.workspace_bytes < 1 << 20:
            raise ValueError(f"expected workspace_bytes >= 1 MiB, got {self.workspace_bytes}")
        if self.dla_core < -1:
            raise ValueError(f"expected dla_core -1 (GPU) or a core index >= 0, got {self.dla_core}")
        if self.dla_core >= 0 and self.precision is Precision.FP32:
            # DLA has no FP32 kernels: an FP32 DLA build would put every layer on the GPU fallback.
            raise ValueError("DLA runs FP16 or INT8 only; expected precision fp16 or int8 with dla_core >= 0")
        if self.calibration_cache is not None and self.precision is not Precision.INT8:
            raise ValueError(
                f"a calibration cache only applies to int8, got precision {self.precision.value}"
            )
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"expected one profile per input, got {names}")

    @property
    def max_batch(self) -> int:
        """The largest batch the engine accepts (1 without profiles: a static network)."""
        return min((p.max[0] for p in self.profiles), default=1)

    @property
    def dynamic(self) -> bool:
        """Whether TensorRT needs an optimisation profile at all (static networks take none)."""
        return any(p.dynamic for p in self.profiles)


def derive_profiles(
    inputs: Sequence[TensorSpec],
    *,
    input_width: int,
    input_height: int,
    max_batch: int,
    opt_batch: int = 1,
) -> tuple[InputProfile, ...]:
    """Optimisation profiles for a model's inputs from its manifest's input size and a max batch.

    Rules for each NCHW input: a dynamic batch spans 1..max_batch (opt: `opt_batch`), a fixed batch stays as
    it is; a dynamic channel dimension is 3 (the server feeds 3-channel images); dynamic height and width are
    the manifest's input size, fixed ones must equal it. Inputs of another rank must be fully static.

    Raises:
        EngineError: a shape the rules cannot fill, or one that contradicts the manifest.
    """
    if max_batch < 1:
        raise EngineError(f"expected max_batch >= 1, got {max_batch}")
    if not 1 <= opt_batch <= max_batch:
        raise EngineError(f"expected opt_batch in [1, {max_batch}], got {opt_batch}")
    profiles = []
    for spec in inputs:
        shown = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
        if len(spec.shape) != _IMAGE_RANK:
            if any(d is None for d in spec.shape):
                raise EngineError(
                    f"input {spec.name!r} of shape {shown}: cannot derive an optimisation profile; "
                    "expected an NCHW image input or a fully static shape"
                )
            static = tuple(int(d) for d in spec.shape if d is not None)
            profiles.append(InputProfile(spec.name, static, static, static))
            continue
        batch, channels, height, width = spec.shape
        if channels is not None and channels != 3:
            raise EngineError(f"input {spec.name!r} of shape {shown}: expected 3 channels, got {channels}")
        for axis, fixed, wanted in (("height", height, input_height), ("width", width, input_width)):
            if fixed is not None and fixed != wanted:
                raise EngineError(
                    f"input {spec.name!r} of shape {shown}: its fixed {axis} {fixed} contradicts the "
                    f"manifest's input_{axis} {wanted}"
                )
        tail = (3, input_height, input_width)
        if batch is None:
            low, mid, high = (1, *tail), (opt_batch, *tail), (max_batch, *tail)
        else:
            low = mid = high = (batch, *tail)
        profiles.append(InputProfile(spec.name, low, mid, high))
    return tuple(profiles)


def onnx_input_specs(path: Path) -> tuple[TensorSpec, ...]:
    """The real inputs of an ONNX file (initializers listed as graph inputs are not inputs), read with onnx.

    Raises:
        EngineError: the file is missing or not an ONNX model, or an input is not a tensor.
    """
    # Imported here: `onnx` costs ~0.6-1 s and ~15 MB at start, and only engine builds read ONNX files.
    import onnx
    from onnx import helper

    try:
        # Weights are not needed for shapes: skip external data, which may be gigabytes.
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise EngineError(f"model file not found: {path}") from None
    except Exception as exc:  # onnx raises DecodeError and friends from protobuf
        raise EngineError(f"{path} is not a valid ONNX model: {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise EngineError(f"input {value.name!r} of {path.name} is not a tensor")
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = tuple(
            dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
            for dim in tensor.shape.dim
        )
        specs.append(TensorSpec(value.name, dtype, shape))
    return tuple(specs)
