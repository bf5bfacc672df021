"""ScaNN's searcher API, imported without TensorFlow.

Why: `scann/__init__.py` imports TensorFlow, for ScaNN's TensorFlow ops, whenever TensorFlow is
installed, and skips those ops when that import raises ModuleNotFoundError (ScaNN installed
without TensorFlow). imgsim only uses the pybind searcher (`scann_ops_pybind`), and importing
TensorFlow costs a process about 5 s and 500 MB of resident memory: every `imgsim query`, every
consumer, every worker building a shard. So unless TensorFlow is loaded already (a pipeline
worker that embeds, search by image), ScaNN is imported down the path it takes without
TensorFlow: `sys.modules["tensorflow"] = None` makes that one import raise ModuleNotFoundError
(Python's documented import protocol), and is removed straight after. TensorFlow imports
normally afterwards.

ScaNN's C++ logs its progress to stderr through its own copy of absl ("I0000 ...
partitioner_factory_base.cc:58] Size of sampled dataset ..."), which no environment variable
reaches: its minimum level is set to ERROR through the library's exported absl::SetMinLogLevel.
"""
from __future__ import annotations

import ctypes
import sys
from types import ModuleType

_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"
_ABSL_ERROR = 2  # absl::LogSeverityAtLeast::kError


def scann_ops_pybind() -> ModuleType:
    """scann.scann_ops.py.scann_ops_pybind (builder, load_searcher)."""
    if "scann" in sys.modules or "tensorflow" in sys.modules:
        from scann.scann_ops.py import scann_ops_pybind as module
        return _quiet(module)
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        from scann.scann_ops.py import scann_ops_pybind as module
    finally:
        if sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return _quiet(module)


def _quiet(module: ModuleType) -> ModuleType:
    """ScaNN's info and warning lines off (idempotent); a build of ScaNN whose absl is another
    version keeps its logs, nothing else changes."""
    path = getattr(getattr(module, "scann_pybind", None), "__file__", None)
    if path:
        try:
            getattr(ctypes.CDLL(path), _ABSL_SET_MIN_LOG_LEVEL)(ctypes.c_int(_ABSL_ERROR))
        except (OSError, AttributeError):
            pass
    return module


def reorder_types() -> dict:
    """imgsim's re-ordering precisions -> ScaNN's ReorderType."""
    scann_ops_pybind()
    from scann.scann_ops.py.scann_builder import ReorderType

    return {"float32": ReorderType.FLOAT32, "bfloat16": ReorderType.BFLOAT16, "int8": ReorderType.INT8}


def scann_version() -> str:
    from importlib.metadata import version

    return version("scann")
