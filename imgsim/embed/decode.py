"""Decoding image bytes into the model's input, with Pillow and numpy only.

The steps, and why:
- JPEG draft mode: the decoder scales by 1/2, 1/4 or 1/8 while decoding, so a
  3000 px museum print decodes 2-4x faster and in a fraction of the memory.
- EXIF orientation is applied, so phone photos are seen upright.
- Every mode becomes 8-bit RGB: 16-bit channels are scaled (not clipped),
  CMYK goes through its ICC profile when it has one, and transparent pixels
  are composited on white (clip-art and cut-out objects sit on white in
  catalogues, and a black background would dominate the features).
- Resize keeps the aspect ratio. The default, ``pad``, fits the whole image in
  224x224 and fills the margins with the median colour of the image's own
  border, so the padding continues the background instead of drawing new
  edges for the convolutions to find. Museum objects (scrolls, panoramas,
  tall sculptures) lose their ends under a centre crop; ``crop`` remains
  available for photo collections. On the clip-art benchmark (precision@1 /
  @5 of same-label neighbours, pool layer): pad with border colour
  0.668 / 0.556, pad with the ImageNet mean 0.636 / 0.539, crop 0.650 / 0.550.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from typing import Optional

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from imgsim.embed.memory import DecodeBudget
from imgsim.failures import StageError

MODEL_INPUT_SIZE = 224
# VGG16 was trained on BGR images with these ImageNet channel means subtracted ("caffe" mode).
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
RESIZE_MODES = ("pad", "crop")
# Bump when anything below changes the pixels the model sees: it is part of the model signature.
PREPROCESSING_VERSION = "v1"
# Pillow's own default; above it Pillow warns, above twice it refuses.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# Decoder state, file buffers and the small images, beyond the full-size pixels.
_DECODE_OVERHEAD = 8 * 1024 * 1024
# Pixels converted at a time: a strip's temporaries are a few MB whatever the image.
_STRIP = 1 << 20
# Rows a decoder holds at once (a PNG decoder: the row being unfiltered and the one before).
_ROW_BUFFERS = 2
# A rotated RGBA image: 4 bytes a pixel decoded, 4 converted, 4 rotated; plus row buffers of at
# most 1 byte a pixel for an image at least 8 rows high. Flatter banners are estimated exactly
# and, where over the budget, refused as decompression bombs.
_WORST_BYTES_PER_PIXEL = 13
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    size: int = MODEL_INPUT_SIZE
    resize: str = "pad"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, not {self.resize!r}")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")

    @property
    def preprocessing_id(self) -> str:
        return f"vgg16-caffe/{self.resize}/{self.size}/{PREPROCESSING_VERSION}"


@dataclasses.dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # uint8 (size, size, 3) RGB
    width: int  # full-resolution size as displayed (after EXIF orientation)
    height: int
    # The oriented RGB image resized for the model, before padding or cropping (its long side is
    # config.size with pad, its short side with crop): the thumbnail's source (imgsim.thumbnails).
    resized: Optional[Image.Image] = None


def decode_image(data: bytes, config: DecodeConfig = DecodeConfig(),
                 budget: Optional[DecodeBudget] = None) -> Decoded:
    """Decode, orient, convert and resize one image; raises StageError with a reason code.

    Memory: the full-resolution image is decoded once and converted to 8-bit RGB
    (or L) strip by strip, so a large image costs its decoded pixels plus the
    converted ones (`decode_cost`: at most 8 bytes a pixel), never the widened or
    repeated full-size copies a whole-image conversion makes. A budget, when
    given, admits the decode only once that much memory is free in this process."""
    if not data:
        raise StageError("empty_body", "no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise StageError("decompression_bomb", str(e)) from None
    except UnidentifiedImageError:
        raise StageError("not_an_image", _sniff(data)) from None
    except Exception as e:  # Pillow raises many types on damaged headers
        raise StageError("corrupt_image", f"{type(e).__name__}: {e}") from None

    width, height = img.size
    if width * height > config.max_pixels:
        raise StageError(
            "decompression_bomb", f"{width}x{height} pixels exceeds the limit of {config.max_pixels}")
    try:
        early = _orientation_before_decoding(img)
        if img.format == "JPEG":
            # Decode at the smallest 1/2^k scale that still covers the model input.
            img.draft(img.mode, (config.size, config.size))
        with budget.reserve(decode_cost(img, early)) if budget is not None else contextlib.nullcontext():
            img.load()
            orientation = early if early is not None else _orientation(img)  # cheap once decoded
            converted = to_rgb(img)
            del img  # the decoded original goes before the next full-size image is made
            if early is not None:
                converted = _orient(converted, orientation)  # at full size, as it always was
            small = converted.resize(target_size(*converted.size, config), Image.Resampling.BICUBIC,
                                     reducing_gap=3.0)
            del converted
        if early is None:  # found only by decoding (a PNG's eXIf after its pixels): turn the small image
            small = _orient(small, orientation)
        rgb = small.convert("RGB") if small.mode != "RGB" else small
    except StageError:
        raise
    except Exception as e:
        raise StageError("corrupt_image", f"{type(e).__name__}: {e}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Decoded(pixels=frame(rgb, config), width=width, height=height, resized=rgb)


def decode_cost(img: Image.Image, orientation=None) -> int:
    """Bytes decoding img takes at its peak (after JPEG draft): the decoded pixels as Pillow stores
    them (1 byte a pixel for 1/L/P, 2 for 16-bit, else 4), plus the converted full-size image
    (RGB is stored in 4 bytes a pixel, L in 1), plus the decoder's row buffers (a PNG decoder
    holds two rows: nothing for most images, all of it for an 89-megapixel banner one pixel
    high, which was estimated 2.7x low without them), plus a fixed allowance for decoder state
    and strips."""
    mode = img.mode
    stored = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    grey = mode == "L" or mode.startswith("I") or mode == "F"
    converted = 0 if (mode == "RGB" and "transparency" not in img.info) or mode == "L" else 1 if grey else 4
    rotated = 0 if orientation in (None, 1) else 1 if grey else 4  # EXIF orientation: one more full copy
    rows = _ROW_BUFFERS * img.size[0] * stored
    return img.size[0] * img.size[1] * (stored + converted + rotated) + rows + _DECODE_OVERHEAD


def max_decode_cost(max_pixels: int) -> int:
    """decode_cost's worst case within the pixel cap for an image at least 8 rows high: a rotated
    RGBA image (_WORST_BYTES_PER_PIXEL)."""
    return max_pixels * _WORST_BYTES_PER_PIXEL + _DECODE_OVERHEAD


def target_size(width: int, height: int, config: DecodeConfig) -> tuple[int, int]:
    """The size an image of (width, height) is resized to before framing: its long side (pad) or
    short side (crop) becomes config.size."""
    size = config.size
    scale = size / max(width, height) if config.resize == "pad" else size / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame(img: Image.Image, config: DecodeConfig) -> np.ndarray:
    """A resized RGB image to the model's square: letterbox (pad) or centre crop."""
    size = config.size
    new_w, new_h = img.size
    if config.resize == "pad":
        canvas = Image.new("RGB", (size, size), border_colour(img))
        canvas.paste(img, ((size - new_w) // 2, (size - new_h) // 2))
        img = canvas
    else:
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def resize(img: Image.Image, config: DecodeConfig) -> np.ndarray:
    """An RGB image to the model's input: aspect-preserving resize, then pad or crop."""
    small = img.resize(target_size(*img.size, config), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return frame(small, config)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, or to L for greyscale (L resizes exactly as RGB with three
    equal channels do, in a quarter of the memory, and becomes RGB once small), compositing
    transparency on white. Large images are converted strip by strip: every conversion here is
    per pixel, so the result is the same as converting the whole image at once."""
    mode = img.mode
    if (mode == "RGB" and "transparency" not in img.info) or mode == "L":
        return img
    if mode.startswith("I") or mode == "F":
        step = _high_depth_step(img)
        return _in_strips(img, "L", lambda strip: Image.fromarray(_high_depth_to_uint8(strip, step), "L"))
    if mode == "CMYK":
        profile = _cmyk_profile(img)
        return _in_strips(img, "RGB", lambda strip: _cmyk_to_rgb(strip, profile))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _in_strips(img, "RGB", _on_white)
    return _in_strips(img, "RGB", lambda strip: strip.convert("RGB"))


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """The median colour of the image's outermost pixels."""
    a = np.asarray(img)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(c) for c in np.median(edge, axis=0))


def vgg16_preprocess(batch: np.ndarray) -> np.ndarray:
    """uint8 RGB NHWC -> float32 BGR with the ImageNet means subtracted (Keras 'caffe' mode)."""
    x = batch[..., ::-1].astype(np.float32)
    x -= np.asarray(IMAGENET_MEAN_RGB[::-1], dtype=np.float32)
    return x


def _orientation_before_decoding(img: Image.Image):
    """The EXIF orientation when it can be read without decoding the pixels, else None. Pillow's
    PNG reader decodes the whole image to look for an eXIf chunk after the pixel data, which
    must not happen before the decode budget is reserved."""
    if img.format == "PNG" and "exif" not in img.info:
        return None
    return _orientation(img) or 1


def _orientation(img: Image.Image):
    try:
        return img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a damaged EXIF block should not cost the image
        return None


def _in_strips(img: Image.Image, mode: str, convert) -> Image.Image:
    """convert(strip) for strips of img (rows, or pieces of a row wider than a strip), pasted into
    one image of `mode`: the full-size result plus one strip of temporaries, instead of whole-image
    temporaries."""
    if img.size[0] * img.size[1] <= _STRIP:
        return convert(img)
    out = Image.new(mode, img.size)
    for (left, top), strip in _strips(img):
        out.paste(convert(strip), (left, top))
    return out


def _on_white(img: Image.Image) -> Image.Image:
    """Transparency composited on white (clip art and cut-outs sit on white in catalogues)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _high_depth_step(img: Image.Image) -> int:
    """How the image's values map to 8 bits, decided on the whole image: 16-bit and wide integer
    images are scaled by 1/257 (not clipped); float images in [0, 1] by 255, others by 1."""
    if img.mode == "F":
        top = max(float(np.nanmax(np.asarray(strip), initial=0.0)) for _, strip in _strips(img))
        return 255 if top <= 1.0 else 1
    high = img.getextrema()[1]
    return 257 if img.mode.startswith("I;16") or high > 255 else 1


def _strips(img: Image.Image):
    """((left, top), piece) covering img, each at most _STRIP pixels: whole rows, or, for an image
    wider than a strip (an 89-megapixel, 1-pixel-high banner), pieces of a row."""
    width, height = img.size
    columns = min(width, _STRIP)
    rows = max(1, _STRIP // max(1, columns))
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield (left, top), img.crop((left, top, min(width, left + columns), min(height, top + rows)))


def _high_depth_to_uint8(img: Image.Image, step: int) -> np.ndarray:
    """A strip of 16-bit, 32-bit integer or float greyscale to 8 bits (`step` from _high_depth_step)."""
    arr = np.asarray(img)
    if img.mode == "F":
        return np.clip(np.nan_to_num(arr.astype(np.float64)) * float(step), 0, 255).astype(np.uint8)
    return np.clip(arr.astype(np.int64) // step, 0, 255).astype(np.uint8)


def _cmyk_profile(img: Image.Image):
    profile = img.info.get("icc_profile")
    if not profile:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except Exception:  # a broken profile: fall back to Pillow's plain conversion
        return None


def _cmyk_to_rgb(img: Image.Image, profile) -> Image.Image:
    if profile is not None:
        try:
            return ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile: fall back to Pillow's plain conversion
            pass
    return img.convert("RGB")


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orient(img: Image.Image, orientation) -> Image.Image:
    """Apply an EXIF orientation (as ImageOps.exif_transpose does)."""
    method = _TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "the body is an HTML/XML document"
    return f"unrecognised bytes starting {data[:8]!r}"
