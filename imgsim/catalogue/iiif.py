"""IIIF Presentation 2.1 and 3.0: manifests and collections as imgsim's rows.

    parse(document, url) -> Manifest | Collection        (ValueError: neither, or malformed)
    manifest_rows(manifest, position) -> [CatalogueRow]  one per image of each canvas

A row's id is its canvas's id, or the canvas id and `#image=N` where a canvas paints several
images (N from 1, in the canvas's order); its URL is the image's own; an image with an Image API
service carries the service's id (`iiif_service`) so that the download can ask for a derivative
of the size the model needs. Each row's metadata has fixed columns (METADATA_SCHEMA): the title
(the manifest's label, and the canvas's where a manifest has several), labels, rights,
required statement, the record's page (`homepage`, v2 `related`), the manifest's id, and the
manifest's `metadata` pairs as one JSON object (labels and values resolved to strings).

Language maps (v3 `{"en": [...]}`, v2 `{"@value", "@language"}` lists) become one string: the
English values if there are any, else the values without a language (`none`, or plain strings),
else the first language's, several values joined by "; ". HTML in values is kept as text.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Union

import pyarrow as pa

from imgsim.catalogue.values import InvalidValue, key_text, normalise_metadata, read_failure
from imgsim.records import CatalogueRow

PREFIX = "iiif:"
PREFERRED_LANGUAGE = "en"
MAX_DEPTH = 8  # collections within collections
MAX_MANIFESTS = 1_000_000  # manifests a run reads without --limit

METADATA_SCHEMA = pa.schema([
    ("title", pa.string()),  # the manifest's label, " · " and the canvas's where it has several
    ("canvas_label", pa.string()),
    ("manifest_label", pa.string()),
    ("manifest", pa.string()),  # the manifest's id: what a IIIF viewer opens
    ("rights", pa.string()),  # v3 rights, v2 license
    ("required_statement", pa.string()),  # v3 requiredStatement, v2 attribution
    ("record_url", pa.string()),  # v3 homepage, v2 related
    ("metadata", pa.string()),  # the manifest's metadata pairs, a JSON object of strings
    ("iiif_service", pa.string()),  # the image's Image API service id, if it has one
])


@dataclasses.dataclass(frozen=True)
class ImageService:
    id: str
    version: int  # 2 or 3


@dataclasses.dataclass(frozen=True)
class PaintedImage:
    url: str
    service: Optional[ImageService]
    width: Optional[int] = None
    height: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Canvas:
    id: str
    label: Optional[str]
    images: tuple[PaintedImage, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    id: str
    version: int
    label: Optional[str]
    rights: Optional[str]
    required_statement: Optional[str]
    record_url: Optional[str]
    metadata: tuple[tuple[str, str], ...]
    canvases: tuple[Canvas, ...]


@dataclasses.dataclass(frozen=True)
class Reference:
    id: str
    kind: str  # "Manifest" or "Collection"


@dataclasses.dataclass(frozen=True)
class Collection:
    id: str
    version: int
    label: Optional[str]
    members: tuple[Reference, ...]


def parse(document: Any, url: str) -> Union[Manifest, Collection]:
    """A Presentation document as typed objects; ValueError naming what is wrong."""
    if not isinstance(document, dict):
        raise ValueError(f"{url}: not a JSON object")
    version = _version(document)
    kind = _kind(document, version)
    ident = _id(document) or url
    if kind == "Collection":
        return Collection(ident, version, language_text(document.get("label")), tuple(_members(document, version)))
    if kind != "Manifest":
        raise ValueError(f"{url}: a IIIF {kind or 'document of no type'}, not a Manifest or Collection")
    canvases = _canvases_v3(document) if version == 3 else _canvases_v2(document)
    return Manifest(
        id=ident, version=version, label=language_text(document.get("label")),
        rights=_rights(document, version), required_statement=_required_statement(document, version),
        record_url=_first_link(document.get("homepage") if version == 3 else document.get("related")),
        metadata=tuple(_pairs(document.get("metadata"))), canvases=tuple(canvases))


def manifest_rows(manifest: Manifest, position: int, max_metadata_bytes: int) -> list:
    """One CatalogueRow per painted image (or read failures of the values), positions from position."""
    rows: list = []
    several = len(manifest.canvases) > 1
    pairs = json.dumps(dict(manifest.metadata), ensure_ascii=False) if manifest.metadata else None
    for canvas in manifest.canvases:
        for number, image in enumerate(canvas.images, 1):
            item_id = canvas.id if len(canvas.images) == 1 else f"{canvas.id}#image={number}"
            title = " · ".join(t for t in (manifest.label, canvas.label if several else None) if t) or None
            raw = {"title": title, "canvas_label": canvas.label, "manifest_label": manifest.label,
                   "manifest": manifest.id, "rights": manifest.rights,
                   "required_statement": manifest.required_statement, "record_url": manifest.record_url,
                   "metadata": pairs, "iiif_service": image.service.id if image.service else None}
            try:
                key, url = key_text(item_id, "canvas id"), key_text(image.url, "image id")
                metadata = normalise_metadata(raw, METADATA_SCHEMA, max_metadata_bytes)
            except InvalidValue as e:
                rows.append(read_failure("invalid_record", item_id, image.url, f"manifest {manifest.id}: {e}"))
                continue
            rows.append(CatalogueRow(id=key, url=url, metadata=metadata, position=position + len(rows)))
    return rows


def language_text(value: Any) -> Optional[str]:
    """One string for a label or value in any of the two versions' forms (module docstring)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and ("@value" in value or "value" in value and "language" in value):
        return language_text([value])
    if isinstance(value, dict):  # v3 language map
        chosen = value.get(PREFERRED_LANGUAGE) or value.get("none") or next(
            (v for v in value.values() if v), None)
        return _joined(chosen)
    if isinstance(value, list):  # v2: strings and {"@value", "@language"} objects
        by_language: dict = {}
        for entry in value:
            if isinstance(entry, str):
                by_language.setdefault(None, []).append(entry)
            elif isinstance(entry, dict):
                text = entry.get("@value", entry.get("value"))
                if isinstance(text, str):
                    by_language.setdefault(entry.get("@language", entry.get("language")), []).append(text)
        chosen = by_language.get(PREFERRED_LANGUAGE) or by_language.get(None) or by_language.get("none") or next(
            (v for v in by_language.values() if v), None)
        return _joined(chosen)
    return None


def _joined(values) -> Optional[str]:
    if values is None:
        return None
    if isinstance(values, str):
        return values
    texts = [v for v in values if isinstance(v, str)]
    return "; ".join(texts) if texts else None


def _version(document: dict) -> int:
    context = document.get("@context")
    contexts = context if isinstance(context, list) else [context]
    if any(isinstance(c, str) and "presentation/3" in c for c in contexts):
        return 3
    if any(isinstance(c, str) and "presentation/2" in c for c in contexts):
        return 2
    return 3 if "type" in document and "@type" not in document else 2


def _kind(document: dict, version: int) -> Optional[str]:
    raw = document.get("type") if version == 3 else document.get("@type")
    if not isinstance(raw, str):
        return None
    return raw.split(":")[-1]  # sc:Manifest -> Manifest


def _id(node: Any) -> Optional[str]:
    if isinstance(node, str):
        return node
    if isinstance(node, dict):
        ident = node.get("id", node.get("@id"))
        return ident if isinstance(ident, str) and ident else None
    return None


def _members(document: dict, version: int) -> list:
    out = []
    if version == 3:
        entries = [(e, _kind(e, 3)) for e in document.get("items") or [] if isinstance(e, dict)]
    else:
        entries = [(e, "Manifest") for e in document.get("manifests") or [] if isinstance(e, (dict, str))]
        entries += [(e, "Collection") for e in document.get("collections") or [] if isinstance(e, (dict, str))]
        entries += [(e, _kind(e, 2)) for e in document.get("members") or [] if isinstance(e, dict)]
    for entry, kind in entries:
        ident = _id(entry)
        if ident and kind in ("Manifest", "Collection"):
            out.append(Reference(ident, kind))
    return out


def _rights(document: dict, version: int) -> Optional[str]:
    value = document.get("rights") if version == 3 else document.get("license")
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str)), None)
    return value if isinstance(value, str) else None


def _required_statement(document: dict, version: int) -> Optional[str]:
    if version == 3:
        statement = document.get("requiredStatement")
        if not isinstance(statement, dict):
            return None
        label, value = language_text(statement.get("label")), language_text(statement.get("value"))
        return f"{label}: {value}" if label and value else value
    return language_text(document.get("attribution"))


def _first_link(value: Any) -> Optional[str]:
    for entry in value if isinstance(value, list) else [value]:
        link = _id(entry)
        if link:
            return link
    return None


def _pairs(metadata: Any) -> list:
    out = []
    for pair in metadata if isinstance(metadata, list) else []:
        if isinstance(pair, dict):
            label, value = language_text(pair.get("label")), language_text(pair.get("value"))
            if label and value is not None:
                out.append((label, value))
    return out


def _service(node: dict) -> Optional[ImageService]:
    services = node.get("service")
    for service in services if isinstance(services, list) else [services]:
        if not isinstance(service, dict):
            continue
        kind = service.get("type", service.get("@type")) or ""
        profile = service.get("profile")
        profile_text = json.dumps(profile) if not isinstance(profile, str) else profile
        context = json.dumps(service.get("@context", ""))
        ident = _id(service)
        if not ident:
            continue
        if kind == "ImageService3" or "image/3" in context:
            return ImageService(ident.rstrip("/"), 3)
        if kind == "ImageService2" or "image/2" in context or "image/2" in profile_text or "level" in profile_text:
            return ImageService(ident.rstrip("/"), 2)
    return None


def _image(body: Any) -> Optional[PaintedImage]:
    if not isinstance(body, dict):
        return None
    kind = body.get("type", body.get("@type")) or ""
    if kind in ("Choice", "oa:Choice"):  # the default, or the first choice
        options = [body.get("default")] + list(body.get("items") or body.get("item") or [])
        return next((found for found in map(_image, options) if found is not None), None)
    if kind not in ("Image", "dctypes:Image") and not (body.get("format") or "").startswith("image/"):
        return None
    url = _id(body)
    if not url:
        return None
    width, height = body.get("width"), body.get("height")
    return PaintedImage(url, _service(body), width if isinstance(width, int) else None,
                        height if isinstance(height, int) else None)


def _canvases_v3(document: dict) -> list:
    canvases = []
    for canvas in document.get("items") or []:
        if not isinstance(canvas, dict) or _kind(canvas, 3) != "Canvas" or not _id(canvas):
            continue
        images = []
        for page in canvas.get("items") or []:
            for annotation in (page.get("items") or []) if isinstance(page, dict) else []:
                if isinstance(annotation, dict) and annotation.get("motivation") in ("painting", None):
                    bodies = annotation.get("body")
                    for body in bodies if isinstance(bodies, list) else [bodies]:
                        image = _image(body)
                        if image is not None:
                            images.append(image)
        if images:
            canvases.append(Canvas(_id(canvas), language_text(canvas.get("label")), tuple(images)))
    return canvases


def _canvases_v2(document: dict) -> list:
    canvases = []
    sequences = document.get("sequences") or []
    first = sequences[0] if sequences and isinstance(sequences[0], dict) else {}
    for canvas in first.get("canvases") or []:
        if not isinstance(canvas, dict) or not _id(canvas):
            continue
        images = []
        for annotation in canvas.get("images") or []:
            if isinstance(annotation, dict):
                image = _image(annotation.get("resource"))
                if image is not None:
                    images.append(image)
        if images:
            canvases.append(Canvas(_id(canvas), language_text(canvas.get("label")), tuple(images)))
    return canvases
