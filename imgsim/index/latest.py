"""OUT/LATEST: the pointer consumers follow to the published index.

    {"run_id", "index": "runs/RUN_ID/index", "created", "manifest_sha256", "format_version"}

It is only ever replaced by compare-and-swap against the version read
earlier (a GCS generation precondition; locally a content hash checked under
an flock on LATEST.lock, imgsim.lockfile), so a publisher or an operator
rolling back never silently overwrites a LATEST that someone else wrote
meanwhile. Readers refuse a LATEST that names anything but its own run's index
directory, and consumers check the manifest against its manifest_sha256.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Optional

from imgsim.index.artifact import FORMAT_VERSION, ArtifactError
from imgsim.runs.layout import RunLayout, check_run_id
from imgsim.storage import ObjectStore, join

LATEST = "LATEST"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Latest:
    run_id: str
    index: str  # relative to the output root
    created: str
    manifest_sha256: str
    generation: int = 0  # the version read (0: not read from storage)
    format_version: int = FORMAT_VERSION  # the artifact's (2: sharded), for a reader to see at a glance

    @classmethod
    def for_run(cls, run_id: str, manifest_sha256: str, format_version: int = FORMAT_VERSION) -> "Latest":
        return cls(run_id=run_id, index=RunLayout.relative_index_dir(run_id), created=now(),
                   manifest_sha256=manifest_sha256, format_version=format_version)

    @classmethod
    def parse(cls, data: bytes, generation: int = 0, where: str = LATEST) -> "Latest":
        """LATEST's content, refused unless it names a valid run, exactly that run's index
        directory (runs/RUN_ID/index: never an absolute path or one with '..', which a consumer
        would follow out of the output root) and the sha256 of its manifest."""
        try:
            doc = json.loads(data)
            fields = {name: doc[name] for name in ("run_id", "index", "created", "manifest_sha256")}
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{where} is malformed ({type(e).__name__}: {e}); point it at a good run with "
                                "imgsim rollback (it must name run_id, index, created, manifest_sha256)") from None
        wrong = [name for name, value in fields.items() if not isinstance(value, str)]
        if wrong:
            raise ArtifactError(f"{where} is malformed: {', '.join(wrong)} must be strings; point it at a good run "
                                "with imgsim rollback")
        run_id = fields["run_id"]
        try:
            check_run_id(run_id)
        except ValueError:
            raise ArtifactError(f"{where} names run_id {run_id!r}, which is not a run id; point it at a good run "
                                "with imgsim rollback") from None
        expected = RunLayout.relative_index_dir(run_id)
        if fields["index"] != expected:
            raise ArtifactError(f"{where} names the index {fields['index']!r}, but LATEST may only name its run's "
                                f"index directory, {expected}; point it at a good run with imgsim rollback")
        if not _SHA256.fullmatch(fields["manifest_sha256"]):
            raise ArtifactError(f"{where} is malformed: manifest_sha256 is not 64 hexadecimal digits; point it at "
                                "a good run with imgsim rollback")
        return cls(**fields, generation=generation)

    def to_json(self) -> bytes:
        doc = {"run_id": self.run_id, "index": self.index, "created": self.created,
               "manifest_sha256": self.manifest_sha256, "format_version": self.format_version}
        return json.dumps(doc, indent=2).encode()


def latest_path(output: str) -> str:
    return join(output, LATEST)


def read_latest(store: ObjectStore, output: str) -> Optional[Latest]:
    """LATEST under output, or None when nothing was published yet; ArtifactError when malformed."""
    path = latest_path(output)
    data, generation = store.read_with_generation(path)
    return None if data is None else Latest.parse(data, generation, path)


def swap_latest(store: ObjectStore, output: str, latest: Latest, expected_generation: int) -> None:
    """Replace LATEST if it is still at expected_generation (0: must not exist); else PreconditionFailed."""
    store.write_bytes(latest_path(output), latest.to_json(), content_type="application/json",
                      if_generation_match=expected_generation)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
