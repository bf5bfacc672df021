"""Time and price of a run, from imgsim's measured rates and a price table the user can replace.

A CPU worker embeds at the rate imgsim measured end to end (imgsim/planning/measured.json, copied from
benchmarks/reference-results.json), scaled by its vCPUs; bf16 and int8 need the CPU instructions
that made them fast here, so each precision names the machine type that has them. A GPU worker
runs at the slower of its GPU's rate (the price table's, marked as not measured) and the decoding
its vCPUs can feed it. Wall time is the job's start plus the images over every worker's rate;
workers are billed for all of it (vCPU, memory, disk, GPU per hour, as Dataflow bills).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
from typing import Optional

# precision -> (the machine type it is priced on, what that machine must have, GPU type or None)
PROFILES = {
    "fp32": ("n1-standard-4", "any x86-64 CPU (infra/profiles/cpu.json)", None),
    "bf16": ("c3d-standard-8", "AVX512_BF16 or AMX (c3d: AMD Genoa, like the measuring machine; c3, c4: AMX)", None),
    "int8": ("n2-standard-8", "AVX-512 VNNI or AMX, with --backend openvino (infra/profiles/int8.json)", None),
    "gpu": ("n1-standard-8", "one NVIDIA T4 (infra/profiles/gpu.json)", "nvidia-tesla-t4"),
}


@dataclasses.dataclass(frozen=True)
class Measured:
    measured: str
    machine: str
    vcpus: int
    images_per_second: dict
    decode_ms: float

    @classmethod
    def packaged(cls) -> "Measured":
        raw = json.loads(importlib.resources.files("imgsim.planning").joinpath("measured.json").read_text("utf-8"))
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})

    def per_vcpu(self, precision: str) -> float:
        return self.images_per_second[precision] / self.vcpus


@dataclasses.dataclass(frozen=True)
class Prices:
    as_of: str
    currency: str
    vcpu_hour: float
    memory_gb_hour: float
    disk_gb_hour: float
    gpu_hour: dict
    job_start_minutes: float
    machine_types: dict
    gpu_images_per_second: dict
    source: str = "imgsim/planning/prices.json"

    @classmethod
    def load(cls, path: Optional[str] = None) -> "Prices":
        """The packaged table, or the user's file (ValueError naming what is missing or wrong)."""
        if path is None:
            text, source = importlib.resources.files("imgsim.planning").joinpath("prices.json").read_text("utf-8"), \
                "imgsim/planning/prices.json"
        else:
            with open(path, encoding="utf-8") as f:
                text, source = f.read(), path
        try:
            raw = json.loads(text)
            fields = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name != "source"}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"--prices {source}: not a price table ({type(e).__name__}: {e}); start from "
                             "imgsim/planning/prices.json") from None
        prices = cls(**fields, source=source)
        for name in ("vcpu_hour", "memory_gb_hour", "disk_gb_hour", "job_start_minutes"):
            if not isinstance(getattr(prices, name), (int, float)) or getattr(prices, name) < 0:
                raise ValueError(f"--prices {source}: {name} must be a number >= 0")
        return prices

    def machine(self, name: str) -> dict:
        try:
            return self.machine_types[name]
        except KeyError:
            raise ValueError(f"machine type {name!r} is not in the price table {self.source} (it has "
                             f"{', '.join(sorted(self.machine_types))}): add it there") from None


@dataclasses.dataclass(frozen=True)
class Estimate:
    precision: str
    machine_type: str
    needs: str
    workers: int
    images_per_second_per_worker: float
    wall_hours: float
    vcpu_hours: float
    cost: float
    note: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def estimate(images: int, precision: str, workers: int, prices: Prices, measured: Measured,
             machine_type: Optional[str] = None, disk_gb: int = 250) -> Estimate:
    default_machine, needs, gpu = PROFILES[precision]
    machine_type = machine_type or default_machine
    machine = prices.machine(machine_type)
    vcpus, memory_gb = machine["vcpus"], machine["memory_gb"]
    note = ""
    if gpu is None:
        rate = measured.per_vcpu(precision) * vcpus
    else:
        feed = vcpus * 1000.0 / measured.decode_ms  # images a second the worker's vCPUs can decode
        gpu_rate = prices.gpu_images_per_second[gpu]
        rate = min(float(gpu_rate["value"]), feed)
        note = gpu_rate["basis"]
    wall_hours = prices.job_start_minutes / 60.0 + images / (rate * workers) / 3600.0
    hourly = (vcpus * prices.vcpu_hour + memory_gb * prices.memory_gb_hour + disk_gb * prices.disk_gb_hour
              + (prices.gpu_hour[gpu] if gpu else 0.0))
    return Estimate(precision, machine_type, needs, workers, round(rate, 2), round(wall_hours, 3),
                    round(workers * vcpus * wall_hours, 2), round(workers * hourly * wall_hours, 2), note)
