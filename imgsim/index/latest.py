"""OUT/LATEST: the pointer consumers follow to the published index.

    {"run_id", "index": "runs/RUN_ID/index", "created", "manifest_sha256", "format_version"}

It is only ever replaced by compare-and-swap against the version read
earlier (a GCS generation precondition; locally a content hash checked under
a lock file), so a publisher or an operator rolling back never silently
overwrites a LATEST that someone else wrote meanwhile.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Optional

from imgsim.index.artifact import FORMAT_VERSION, ArtifactError
from imgsim.runs.layout import RunLayout
from imgsim.storage import ObjectStore, join

LATEST = "LATEST"


@dataclasses.dataclass(frozen=True)
class Latest:
    run_id: str
    index: str  # relative to the output root
    created: str
    manifest_sha256: str
    generation: int = 0  # the version read (0: not read from storage)

    @classmethod
    def for_run(cls, run_id: str, manifest_sha256: str) -> "Latest":
        return cls(run_id=run_id, index=RunLayout.relative_index_dir(run_id), created=now(),
                   manifest_sha256=manifest_sha256)

    @classmethod
    def parse(cls, data: bytes, generation: int = 0, where: str = LATEST) -> "Latest":
        try:
            doc = json.loads(data)
            return cls(run_id=str(doc["run_id"]), index=str(doc["index"]), created=str(doc["created"]),
                       manifest_sha256=str(doc["manifest_sha256"]), generation=generation)
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{where} is malformed ({type(e).__name__}: {e}); "
                                "fix or delete it (it must name run_id, index, created, manifest_sha256)") from None

    def to_json(self) -> bytes:
        doc = {"run_id": self.run_id, "index": self.index, "created": self.created,
               "manifest_sha256": self.manifest_sha256, "format_version": FORMAT_VERSION}
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
