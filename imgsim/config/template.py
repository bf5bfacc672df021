"""The Dataflow Flex Template's metadata.json, made from the flags of `imgsim run`.

`imgsim template-metadata > infra/metadata.json` regenerates it; a test fails
when the committed file differs, so the template and the CLI cannot drift.
Flags declared with `template=False` are left out, each with its reason in
the declaration (imgsim.config.options).
"""
from __future__ import annotations

import json

from imgsim.config.flags import declared_flags, template_parameter
from imgsim.config.options import RunOptions

NAME = "imgsim: embed images with VGG16 and publish a ScaNN index"
DESCRIPTION = (
    "Reads a manifest, a gs:// glob of images or the Cleveland Museum of Art API, embeds every image with "
    "VGG16, writes embeddings and failures as Parquet under OUTPUT/runs/RUN_ID/, builds a ScaNN index with "
    "measured recall and publishes it by compare-and-swap of OUTPUT/LATEST. Parameters are the flags of "
    "`imgsim run` with underscores (see README.md).")


def flex_template_metadata() -> dict:
    parameters = [template_parameter(d) for d in declared_flags(RunOptions) if d.spec.template]
    return {"name": NAME, "description": DESCRIPTION, "parameters": parameters}


def excluded_flags() -> dict[str, str]:
    """The flags of `imgsim run` that are not template parameters, with the reason."""
    return {d.name: d.spec.template_excluded for d in declared_flags(RunOptions) if not d.spec.template}


def metadata_json() -> str:
    return json.dumps(flex_template_metadata(), indent=2, ensure_ascii=False) + "\n"
