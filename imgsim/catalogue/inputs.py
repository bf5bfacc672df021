"""What ``--input`` names: a manifest file, a glob of image files, or the CMA API.

Resolved once on the launcher, where a bad input can still fail fast with a
one-line message, and then handed to the pipeline as a plain value.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

from imgsim.catalogue import manifest
from imgsim.catalogue.cma import CmaQuery
from imgsim.storage import ObjectStore, fixed_prefix, is_gcs

_WILDCARDS = "*?["


@dataclasses.dataclass(frozen=True)
class ManifestInput:
    path: str
    schema: manifest.ManifestSchema
    limit: Optional[int] = None

    def describe(self) -> dict:
        return {"kind": "manifest", "path": self.path, "format": self.schema.format, "limit": self.limit}


@dataclasses.dataclass(frozen=True)
class GlobInput:
    pattern: str
    limit: Optional[int] = None

    @property
    def prefix(self) -> str:
        return fixed_prefix(self.pattern)

    def describe(self) -> dict:
        return {"kind": "glob", "pattern": self.pattern, "limit": self.limit}


@dataclasses.dataclass(frozen=True)
class CmaInput:
    query: CmaQuery

    @property
    def limit(self) -> Optional[int]:
        return self.query.limit

    def describe(self) -> dict:
        return self.query.describe()


InputSpec = Union[ManifestInput, GlobInput, CmaInput]


def resolve_input(value: str, store: ObjectStore, limit: Optional[int] = None,
                  cma_query: Optional[CmaQuery] = None, id_column: str = "id",
                  url_column: str = "url") -> InputSpec:
    """Classify and check --input; raises ValueError with a message that says what to fix."""
    if limit is not None and limit < 1:
        raise ValueError("--limit must be at least 1")
    if not value:
        raise ValueError("--input is required: a manifest (.csv/.jsonl/.parquet), a glob of images, or 'cma'")
    if value == "cma":
        return CmaInput(dataclasses.replace(cma_query or CmaQuery(), limit=limit))
    if not is_gcs(value) and os.path.isdir(value):
        value = os.path.join(value, "**")
    if any(ch in value for ch in _WILDCARDS):
        if not store.glob(value):
            raise ValueError(f"--input {value!r}: the glob matches no files")
        return GlobInput(value, limit)
    if manifest.detect_format(value) is None:
        raise ValueError(
            f"--input {value!r}: not a manifest (.csv, .jsonl, .parquet, optionally .gz), "
            "a glob or directory of images, or 'cma'")
    try:
        with store.open_read(value) as raw:
            schema = manifest.inspect(raw, value, id_column, url_column)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise ValueError(f"--input {value!r}: cannot open the manifest ({e.strerror or e})") from None
    except manifest.ManifestError:
        raise
    except Exception as e:  # e.g. google.api_core NotFound / Forbidden for gs:// paths
        raise ValueError(f"--input {value!r}: cannot open the manifest ({type(e).__name__}: {e})") from None
    return ManifestInput(value, schema, limit)
