"""int8 calibration: quantise once, check agreement with fp32, and name the result by checksum.

A run's int8 model is made once, on the launcher, from a fixed sample (the first
--calibration-size images of the input, decoded exactly as the pipeline decodes
them, or a folder named by --calibration). Its checksum goes into the model
signature, so int8 and fp32 vectors, or the vectors of two calibrations, never
share an index. Before anything is embedded, int8 is compared with fp32 on
images of the input: the share of each image's top-10 neighbours (among the
sample) that both agree on, and the cosine between the two vectors of each
image. Below --min-int8-agreement the run is refused: a calibration that does
not represent the collection would silently change what is "similar".
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from imgsim.embed.model import ModelSpec, build_model


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How int8 vectors agree with fp32 ones on the same images."""

    images: int
    mean_cosine: float
    min_cosine: float
    top10_overlap: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Agreement":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """reference, candidate: unit vectors of the same images (rows), e.g. fp32 and int8."""
    cosines = np.sum(reference * candidate, axis=1)
    k = min(10, len(reference) - 1)

    def top(vectors):
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top(reference), top(candidate))]) if k > 0 else 1.0
    return Agreement(images=len(reference), mean_cosine=round(float(cosines.mean()), 6),
                     min_cosine=round(float(cosines.min()), 6), top10_overlap=round(float(overlap), 4))


def calibrate(spec: ModelSpec, weights_path: str, calibration: np.ndarray, evaluation: np.ndarray,
              out_dir: str) -> tuple[str, Agreement]:
    """Quantise spec's model on the calibration images (uint8 RGB, preprocessed here as the pipeline
    does), write it to out_dir as OpenVINO IR, and measure its agreement with fp32 on the
    evaluation images. Returns (the quantised model's checksum, the agreement)."""
    from imgsim.embed import openvino_backend

    fp32 = openvino_backend.convert(build_model(dataclasses.replace(spec, precision="fp32", backend="keras"),
                                                weights_path))
    int8 = openvino_backend.quantize(fp32, calibration)
    checksum = openvino_backend.save(int8, out_dir)
    reference = openvino_backend.OpenVinoEmbedder(fp32, spec.dim, "fp32")(evaluation)[0]
    candidate = openvino_backend.OpenVinoEmbedder(openvino_backend.load(out_dir), spec.dim, "int8")(evaluation)[0]
    return checksum, agreement(reference, candidate)


def int8_acceleration() -> list[str]:
    """The CPU's int8 dot-product instructions (empty: int8 may be slower than fp32 here, and
    without VNNI, u8 x s8 products can saturate)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(set(flags) & {"avx512_vnni", "avx_vnni", "amx_int8"})


def ir_present(directory: str) -> bool:
    from imgsim.embed.openvino_backend import IR_FILES

    return all(os.path.isfile(os.path.join(directory, name)) for name in IR_FILES)
