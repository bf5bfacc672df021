"""The int8 step of preflight: one quantised model per run, made or reused on the launcher.

    OUT/runs/RUN_ID/model/model.xml, model.bin   the quantised model (OpenVINO IR), shipped to the workers
    OUT/runs/RUN_ID/model/calibration.json       its checksum, the agreement with fp32, where the sample came from

The model is, in order of preference:
- this run's own, left by an interrupted attempt with the same --run-id (a restart resumes with it);
- LATEST's run's, when that run was int8 with the same layer, weights and preprocessing, and
  neither --full nor --calibration asks for a new one. Scheduled incremental runs then keep one
  calibration, so their unchanged images are reused instead of all being embedded again; a new
  calibration (--full, or --calibration) changes the signature and re-embeds everything;
- one made before, by any run on this machine, from the same images: calibrations are kept in
  imgsim's cache (~/.cache/imgsim/int8/KEY), keyed by everything they depend on (layer, weights,
  preprocessing, the calibration and evaluation images' pixels, OpenVINO's and NNCF's versions), so
  a fresh output on the same collection skips the minute of quantisation;
- a new calibration on the first --calibration-size images of the input (downloaded and decoded
  exactly as the pipeline does; rows that fail are skipped), or on the images --calibration names.
The agreement with fp32 is always measured on images of the input, so a calibration set that does
not represent the collection is caught by --min-int8-agreement.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Iterator, Optional

import numpy as np

from imgsim.catalogue import cma, iiif_documents, manifest
from imgsim.catalogue.inputs import CmaInput, GlobInput, IiifInput, InputSpec, ManifestInput
from imgsim.config.flags import ConfigError
from imgsim.embed.calibration import Agreement, calibrate, int8_acceleration, ir_present
from imgsim.embed.decode import DecodeConfig, decode_image
from imgsim.embed.model import ModelSpec
from imgsim.embed.openvino_backend import IR_FILES, ir_checksum
from imgsim.failures import Failure
from imgsim.fetch.acquire import acquire
from imgsim.fetch.http import FetchConfig, Fetcher
from imgsim.records import CatalogueRow, DecodedImage
from imgsim.runs.layout import RunLayout
from imgsim.storage import ObjectStore, cache_dir, join, replacing

_LOG = logging.getLogger("imgsim.calibration")
CALIBRATION_JSON = "calibration.json"
CACHE = "int8"  # under imgsim's cache: one directory per calibration key


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """The run's int8 model: where it is (local or gs://), its checksum, and how it agrees with fp32."""

    directory: str
    checksum: str
    agreement: Agreement
    source: str

    def describe(self) -> dict:
        return {"quantization": self.checksum, "int8_agreement": self.agreement.to_dict(), "calibration": self.source}


def prepare_int8(store: ObjectStore, spec: ModelSpec, weights_path: str, weights_checksum: str, layout: RunLayout,
                 latest_run_id: Optional[str], source: InputSpec, fetch: FetchConfig, api_fetch: FetchConfig,
                 decode: DecodeConfig, size: int, calibration_glob: Optional[str], min_agreement: float,
                 full: bool) -> QuantizedModel:
    acceleration = int8_acceleration()
    if not acceleration:
        _LOG.warning("this CPU has neither AVX512-VNNI, AVX-VNNI nor AMX: int8 may run slower than fp32 here")
    directory = join(layout.run_dir, "model")
    base = {"layer": spec.layer, "weights_checksum": weights_checksum, "preprocessing": decode.preprocessing_id}
    model = _existing(store, directory, "resumed from this run's earlier attempt")
    if model is None and latest_run_id and not full and calibration_glob is None:
        earlier = join(RunLayout(layout.output, latest_run_id).run_dir, "model")
        found = _existing(store, earlier, f"reused from run {latest_run_id}")
        if found is not None and json.loads(store.read_bytes(join(earlier, CALIBRATION_JSON))).get("base") == base:
            for name in (*IR_FILES, CALIBRATION_JSON):
                store.write_bytes(join(directory, name), store.read_bytes(join(earlier, name)))
            model = dataclasses.replace(found, directory=directory)
    if model is None:
        model = _calibrate(store, spec, weights_path, directory, source, fetch, api_fetch, decode, size,
                           calibration_glob, base)
    if model.agreement.top10_overlap < min_agreement:
        raise ConfigError(
            f"int8 agrees with fp32 on {model.agreement.top10_overlap:.3f} of top-10 neighbours "
            f"({model.agreement.images} images; mean cosine {model.agreement.mean_cosine:.4f}), "
            f"{min_agreement - model.agreement.top10_overlap:.3f} below --min-int8-agreement {min_agreement}: "
            "calibrate on images that represent the collection (--calibration), or use --precision bf16")
    return model


def _existing(store: ObjectStore, directory: str, source: str) -> Optional[QuantizedModel]:
    path = join(directory, CALIBRATION_JSON)
    if not store.exists(path) or not all(store.exists(join(directory, name)) for name in IR_FILES):
        return None
    record = json.loads(store.read_bytes(path))
    return QuantizedModel(directory, record["checksum"], Agreement.from_dict(record["agreement"]), source)


def _calibrate(store, spec, weights_path, directory, source, fetch, api_fetch, decode, size, calibration_glob,
               base) -> QuantizedModel:
    evaluation_ids, evaluation = sample_input(store, source, fetch, api_fetch, decode, size)
    if len(evaluation) < 16:
        raise ConfigError(f"int8 needs at least 16 images of the input to calibrate and check on; only "
                          f"{len(evaluation)} of the first rows could be downloaded and decoded")
    if calibration_glob:
        paths = sorted(store.glob(calibration_glob))[:size]
        if len(paths) < 16:
            raise ConfigError(f"--calibration {calibration_glob!r} matches {len(paths)} files; int8 needs at least 16")
        calibration = np.stack([decode_image(store.read_bytes(p), decode).pixels for p in paths])
        described = f"{len(paths)} images of --calibration {calibration_glob}"
    else:
        calibration = evaluation
        described = f"the first {len(evaluation)} images of the input"
    key = calibration_key(base, calibration, evaluation)
    cached = cache_dir(CACHE, key)
    record = _cached(cached, key)
    if record is None:
        with tempfile.TemporaryDirectory(prefix="imgsim-int8-") as work:
            checksum, agreement = calibrate(spec, weights_path, calibration, evaluation, work)
            record = {"checksum": checksum, "agreement": agreement.to_dict(), "source": described,
                      "base": base, "evaluated_on": evaluation_ids, "key": key}
            _keep(work, cached, record)
        _LOG.info("int8: calibrated on %s; agreement with fp32 %s", described, record["agreement"])
    else:
        record = {**record, "source": f"{described} (calibrated before: {cached})"}
        _LOG.info("int8: the calibration on %s is in the cache (%s)", described, cached)
    for name in IR_FILES:
        store.upload_file(os.path.join(cached, name), join(directory, name))
    store.write_bytes(join(directory, CALIBRATION_JSON), json.dumps(record, indent=2).encode(),
                      content_type="application/json")
    return QuantizedModel(directory, record["checksum"], Agreement.from_dict(record["agreement"]), record["source"])


def calibration_key(base: dict, calibration: np.ndarray, evaluation: np.ndarray) -> str:
    """What a calibration depends on, hashed: the model it quantises, the images it is made and
    checked on (decoded pixels: the same URL with other bytes is another calibration), and the
    versions of the tools that make it."""
    from importlib.metadata import version

    digest = hashlib.sha256(json.dumps(base, sort_keys=True).encode())
    for name in ("openvino", "nncf"):
        digest.update(f"{name}={version(name)}".encode())
    for images in (calibration, evaluation):
        digest.update(repr(images.shape).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:32]


def _cached(directory: str, key: str) -> Optional[dict]:
    """The cached calibration's record, if it is complete and its files are the ones it names."""
    path = os.path.join(directory, CALIBRATION_JSON)
    if not os.path.isfile(path) or not ir_present(directory):
        return None
    try:
        record = json.loads(open(path, encoding="utf-8").read())
    except ValueError:
        return None
    if record.get("key") != key or ir_checksum(directory) != record.get("checksum"):
        return None
    return record


def _keep(work: str, directory: str, record: dict) -> None:
    """Put a new calibration into the cache; the record last, so a half-written entry is never used."""
    os.makedirs(directory, exist_ok=True)
    for name in IR_FILES:
        shutil.copyfile(os.path.join(work, name), os.path.join(directory, name))
    with replacing(os.path.join(directory, CALIBRATION_JSON)) as f:
        f.write(json.dumps(record, indent=2).encode())


def sample_input(store: ObjectStore, source: InputSpec, fetch: FetchConfig, api_fetch: FetchConfig,
                 decode: DecodeConfig, size: int) -> tuple[list[str], np.ndarray]:
    """The first `size` images of the input that download and decode (at most 4 x size rows tried)."""
    fetcher = Fetcher(fetch, pool_size=4)
    ids, pixels = [], []
    try:
        for tried, row in enumerate(_first_rows(store, source, api_fetch, 4 * size)):
            result = acquire(row, fetcher, store, decode).result
            if isinstance(result, DecodedImage):
                ids.append(row.id)
                pixels.append(result.pixels)
                if len(pixels) == size:
                    break
    finally:
        fetcher.close()
    return ids, np.stack(pixels) if pixels else np.zeros((0, decode.size, decode.size, 3), np.uint8)


def _first_rows(store: ObjectStore, source: InputSpec, api_fetch: FetchConfig, most: int) -> Iterator[CatalogueRow]:
    if isinstance(source, ManifestInput):
        with store.open_read(source.path) as raw:
            for item in manifest.iter_rows(raw, source.path, source.schema, most, source.max_metadata_bytes):
                if not isinstance(item, Failure):
                    yield item
    elif isinstance(source, GlobInput):
        for position, path in enumerate(sorted(store.glob(source.pattern))[:most]):
            item = source.row(path, position)
            if not isinstance(item, Failure):
                yield item
    elif isinstance(source, IiifInput):
        fetcher = Fetcher(api_fetch, pool_size=1)
        try:
            yield from iiif_documents.first_rows(source.url, fetcher, store, most, source.max_metadata_bytes)
        finally:
            fetcher.close()
    elif isinstance(source, CmaInput):
        fetcher = Fetcher(api_fetch, pool_size=1)
        try:
            total, records = cma.load_page(fetcher.fetch(source.query.page_url(0, min(most, cma.MAX_PAGE_SIZE))).data)
        finally:
            fetcher.close()
        for position, record in enumerate(records):
            item = cma.record_to_row(record, position, source.max_metadata_bytes)
            if not isinstance(item, Failure):
                yield item
