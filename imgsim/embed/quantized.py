"""Getting a run's quantised (int8) model onto the machine that needs it, checked by checksum.

Workers and consumers load the model a run calibrated (imgsim.embed.calibration),
from the run's model/ directory or an index artifact's, local or gs://. A gs://
copy lands in imgsim's cache under its checksum, and is used only when it
matches: a model that changed is never loaded under the signature of another.
"""
from __future__ import annotations

import os

from imgsim.embed.openvino_backend import IR_FILES, ir_checksum
from imgsim.storage import ObjectStore, cache_dir, is_gcs, join


class QuantizedModelChanged(RuntimeError):
    """The quantised model's files are not the ones the run's signature names."""


def quantized_model_copy(store: ObjectStore, directory: str, checksum: str) -> str:
    """A local directory holding the quantised model at directory, verified against checksum."""
    if not directory or not checksum:
        raise ValueError("int8 needs the run's quantised model and its checksum")
    local = directory
    if is_gcs(directory):
        local = cache_dir("models", checksum.split(":", 1)[-1][:32])
        if not all(os.path.isfile(os.path.join(local, name)) for name in IR_FILES) or ir_checksum(local) != checksum:
            for name in IR_FILES:
                store.download_to_file(join(directory, name), os.path.join(local, name))
    actual = ir_checksum(local)
    if actual != checksum:
        raise QuantizedModelChanged(f"the quantised model at {directory} has checksum {actual}, not {checksum}: "
                                    "it changed since the run was calibrated")
    return local
