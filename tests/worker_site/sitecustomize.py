"""On PYTHONPATH of the pipeline's worker processes in tests/test_index_pipeline.py: they import
ScaNN without TensorFlow, as a consumer may (ScaNN imports TensorFlow's ops when it can, which
costs a worker 3 s and 400 MB; imgsim's index uses ScaNN's own API, never those ops)."""
import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _NoTensorFlow())
