"""Seeded perturbed copies of an image: what near-duplicates look like in real collections.

Each kind is what happens to images between catalogues: a tighter crop, a
thumbnail, a JPEG re-encode, a slightly rotated scan, a different exposure, a
caption or watermark, a greyscale print. `perturbations(image, rng)` makes one
copy per kind, with the parameters drawn from the seeded generator and
returned, so a benchmark is repeatable and its copies can be listed.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from imgsim.embed.decode import border_colour

Perturbation = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, dict]]


def crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    share = float(rng.uniform(0.05, 0.20))  # of each side, split between the two edges
    w, h = image.size
    left, top = int(w * share * rng.uniform(0, 1)), int(h * share * rng.uniform(0, 1))
    box = (left, top, left + round(w * (1 - share)), top + round(h * (1 - share)))
    return image.crop(box), {"removed": round(share, 3)}


def downscale(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    factor = float(rng.uniform(0.25, 0.5))
    w, h = image.size
    return image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS), {
        "factor": round(factor, 3)}


def jpeg(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    quality = int(rng.integers(30, 91))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())), {"quality": quality}


def rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    degrees = float(rng.uniform(2, 5) * rng.choice([-1, 1]))
    return image.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=border_colour(image)), {
        "degrees": round(degrees, 2)}


def brightness_contrast(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    brightness, contrast = float(rng.uniform(0.7, 1.3)), float(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(contrast)
    return image, {"brightness": round(brightness, 3), "contrast": round(contrast, 3)}


def text_overlay(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    image = image.copy()
    w, h = image.size
    size = max(10, h // 12)
    text = "© imgsim collection"
    font = ImageFont.load_default(size=size)
    x, y = int(rng.uniform(0, w * 0.4)), int(rng.uniform(h * 0.6, h * 0.9))
    colour = (255, 255, 255) if rng.uniform() < 0.5 else (0, 0, 0)
    ImageDraw.Draw(image).text((x, y), text, fill=colour, font=font)
    return image, {"text": text, "size": size, "at": [x, y]}


def greyscale(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    return ImageOps.grayscale(image).convert("RGB"), {}


KINDS: dict[str, Perturbation] = {
    "crop": crop, "downscale": downscale, "jpeg": jpeg, "rotate": rotate,
    "brightness_contrast": brightness_contrast, "text_overlay": text_overlay, "greyscale": greyscale,
}


def perturbations(image: Image.Image, rng: np.random.Generator) -> list[tuple[str, Image.Image, dict]]:
    """One copy of an RGB image per kind: (kind, copy, parameters)."""
    return [(kind, *make(image, rng)) for kind, make in KINDS.items()]


def encode(image: Image.Image) -> bytes:
    """A copy as the bytes imgsim would download (PNG, so only the perturbation changes it)."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
