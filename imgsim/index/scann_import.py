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
"""
from __future__ import annotations

import sys
from types import ModuleType


def scann_ops_pybind() -> ModuleType:
    """scann.scann_ops.py.scann_ops_pybind (builder, load_searcher)."""
    if "scann" in sys.modules or "tensorflow" in sys.modules:
        from scann.scann_ops.py import scann_ops_pybind as module
        return module
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        from scann.scann_ops.py import scann_ops_pybind as module
    finally:
        if sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return module


def reorder_types() -> dict:
    """imgsim's re-ordering precisions -> ScaNN's ReorderType."""
    scann_ops_pybind()
    from scann.scann_ops.py.scann_builder import ReorderType

    return {"float32": ReorderType.FLOAT32, "bfloat16": ReorderType.BFLOAT16, "int8": ReorderType.INT8}
