"""The model signature: what must match for two embeddings to be comparable.

It travels in every embeddings Parquet file's key-value metadata and in the
index manifest. Vectors from different signatures never share an index, and a
query image is refused if the model at hand does not match the index.
"""
from __future__ import annotations

import dataclasses
import json

PARQUET_METADATA_KEY = b"imgsim.model_signature"


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    model: str  # architecture, e.g. "vgg16"
    layer: str  # fc2, fc1 or pool
    dim: int
    weights: str  # as given: "imagenet", a path or a gs:// URI (informational)
    weights_checksum: str  # "md5:..." (Keras-verified download) or "sha256:..." (a file)
    preprocessing: str  # imgsim.embed.decode.DecodeConfig.preprocessing_id
    precision: str  # fp32, bf16 or int8
    backend: str = "keras"  # keras or openvino
    quantization: str = ""  # int8: "sha256:..." of the quantised model (one calibration), else ""

    # The fields that decide whether vectors are comparable; `weights` is only where they came from.
    _IDENTITY = ("model", "layer", "dim", "weights_checksum", "preprocessing", "precision", "backend",
                 "quantization")
    # Fields added after the first release: older signatures lack them and mean the default.
    _OPTIONAL = ("backend", "quantization")

    def identity(self) -> tuple:
        return tuple(getattr(self, name) for name in self._IDENTITY)

    def matches(self, other: "ModelSignature") -> bool:
        return self.identity() == other.identity()

    def differences(self, other: "ModelSignature") -> list[str]:
        return [f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
                for name in self._IDENTITY if getattr(self, name) != getattr(other, name)]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSignature":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data) - set(cls._OPTIONAL)
        if missing:
            raise ValueError(f"model signature lacks {sorted(missing)}")
        present = names & set(data)
        for name in present:
            wanted = int if name == "dim" else str
            if type(data[name]) is not wanted:
                raise ValueError(f"model signature field {name} is {data[name]!r}, not {wanted.__name__}")
        return cls(**{name: data[name] for name in present})

    @classmethod
    def from_json(cls, text) -> "ModelSignature":
        return cls.from_dict(json.loads(text))
