"""What ``--input`` names: a manifest file, a glob of image files, the CMA API, or a IIIF manifest
or collection (``iiif:URL``).

Resolved once on the launcher, where a bad input can still fail fast with a
one-line message, and then handed to the pipeline as a plain value.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

from imgsim.catalogue import iiif, manifest
from imgsim.catalogue.cma import CmaQuery
from imgsim.catalogue.streams import DamagedFileError, check_compressed, is_compressed
from imgsim.catalogue.values import DEFAULT_MAX_METADATA_BYTES, is_valid_text, read_failure
from imgsim.failures import Failure
from imgsim.records import SOURCE_STORAGE, CatalogueRow
from imgsim.storage import ObjectStore, fixed_prefix, is_gcs

_WILDCARDS = "*?["


@dataclasses.dataclass(frozen=True)
class ManifestInput:
    path: str
    schema: manifest.ManifestSchema
    limit: Optional[int] = None
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES  # each metadata value and each line

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

    def row(self, path: str, position: int) -> Union[CatalogueRow, Failure]:
        """The row of one matched file: its id is the path under the prefix. A name that is not
        UTF-8 (Python hands it over as surrogate escapes) cannot be an id the outputs can store."""
        if not is_valid_text(path):
            return read_failure("invalid_record", path[len(self.prefix):], path,
                                "the file name is not valid UTF-8 (shown escaped)")
        return CatalogueRow(id=path[len(self.prefix):], url=path, metadata={}, position=position,
                            source=SOURCE_STORAGE)


@dataclasses.dataclass(frozen=True)
class CmaInput:
    query: CmaQuery
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES  # each metadata value

    @property
    def limit(self) -> Optional[int]:
        return self.query.limit

    def describe(self) -> dict:
        return self.query.describe()


@dataclasses.dataclass(frozen=True)
class IiifInput:
    url: str  # a Presentation 2.1 or 3.0 manifest or collection: http(s), gs:// or a local file
    limit: Optional[int] = None
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES

    def describe(self) -> dict:
        return {"kind": "iiif", "url": self.url, "limit": self.limit}


InputSpec = Union[ManifestInput, GlobInput, CmaInput, IiifInput]


def resolve_input(value: str, store: ObjectStore, limit: Optional[int] = None,
                  cma_query: Optional[CmaQuery] = None, id_column: str = "id",
                  url_column: str = "url",
                  max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> InputSpec:
    """Classify and check --input; raises ValueError with a message that says what to fix.

    A compressed manifest is decompressed to its end here, so a damaged one fails before the run."""
    if limit is not None and limit < 1:
        raise ValueError("--limit must be at least 1")
    if max_metadata_bytes < 1:
        raise ValueError("--max-metadata-bytes must be at least 1")
    if not value:
        raise ValueError("--input is required: a manifest (.csv/.jsonl/.parquet), a glob of images, or 'cma'")
    if value == "cma":
        return CmaInput(dataclasses.replace(cma_query or CmaQuery(), limit=limit), max_metadata_bytes)
    if value.startswith(iiif.PREFIX):
        url = value[len(iiif.PREFIX):]
        if not url:
            raise ValueError("--input iiif:URL needs the URL of a IIIF manifest or collection")
        if "://" in url and not url.startswith(("http://", "https://", "gs://")):
            raise ValueError(f"--input {value!r}: a IIIF document is read over http(s), from gs:// or a local file")
        if "://" not in url and not os.path.isfile(url):
            raise ValueError(f"--input {value!r}: no such file")
        return IiifInput(url, limit, max_metadata_bytes)
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
        if is_compressed(value):
            with store.open_read(value) as raw:
                check_compressed(raw, value)
        with store.open_read(value) as raw:
            schema = manifest.inspect(raw, value, id_column, url_column, max_metadata_bytes)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise ValueError(f"--input {value!r}: cannot open the manifest ({e.strerror or e})") from None
    except (manifest.ManifestError, DamagedFileError):
        raise
    except Exception as e:  # e.g. google.api_core NotFound / Forbidden for gs:// paths
        raise ValueError(f"--input {value!r}: cannot open the manifest ({type(e).__name__}: {e})") from None
    return ManifestInput(value, schema, limit, max_metadata_bytes)
