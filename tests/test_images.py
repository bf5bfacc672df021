"""Decoding and preprocessing with real Pillow on real and constructed images."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg, png
from imgsim.failures import StageError
from imgsim.embed.decode import DecodeConfig, border_colour, decode_image, vgg16_preprocess

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def close(pixel, colour, tol=40):
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, colour))


def reason_of(data, config=DecodeConfig()):
    with pytest.raises(StageError) as info:
        decode_image(data, config)
    return info.value.reason


def test_real_photo_keeps_its_size_and_becomes_224_rgb(photos):
    out = decode_image(photos["kite"])
    assert out.pixels.shape == (224, 224, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height) == (1352, 900)


def test_pad_fits_the_whole_image_and_fills_with_its_border_colour():
    wide = Image.new("RGB", (2000, 100), (30, 30, 30))
    wide.paste(Image.new("RGB", (200, 100), RED), (900, 0))
    out = decode_image(jpeg(np.asarray(wide)), DecodeConfig(resize="pad"))
    assert (out.width, out.height) == (2000, 100)
    assert close(out.pixels[0, 112], (30, 30, 30), 8) and close(out.pixels[223, 112], (30, 30, 30), 8)
    assert close(out.pixels[112, 112], RED)  # the red block in the middle survives
    assert close(out.pixels[112, 2], (30, 30, 30), 8)  # both ends of the panorama are in the frame


def test_crop_fills_the_frame_with_the_centre():
    wide = Image.new("RGB", (600, 200), BLUE)
    wide.paste(Image.new("RGB", (200, 200), RED), (200, 0))
    out = decode_image(png(wide), DecodeConfig(resize="crop"))
    assert close(out.pixels[0, 112], RED) and close(out.pixels[223, 112], RED)
    assert close(out.pixels[112, 0], RED, 60) and close(out.pixels[112, 223], RED, 60)


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (300, 100), RED)
    stored.paste(Image.new("RGB", (150, 100), BLUE), (150, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
    out = decode_image(jpeg(stored, exif=exif.tobytes()))
    assert (out.width, out.height) == (100, 300)
    # Turned clockwise, the stored left half (red) is on top and the right half (blue) below.
    assert close(out.pixels[20, 112], RED) and close(out.pixels[200, 112], BLUE)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(jpeg(cmyk))
    assert close(out.pixels[112, 112], RED, 50)


def test_16_bit_png_is_scaled_not_clipped():
    mid = Image.fromarray(np.full((50, 50), 32768, dtype=np.uint16))
    assert mid.mode.startswith("I")
    out = decode_image(png(mid))
    assert close(out.pixels[112, 112], (128, 128, 128), 2)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    rgba.paste(Image.new("RGBA", (32, 64), (0, 0, 255, 255)), (0, 0))
    out = decode_image(png(rgba))
    assert close(out.pixels[112, 200], WHITE, 5) and close(out.pixels[112, 20], BLUE, 5)

    la = Image.new("LA", (64, 64), (0, 0))  # transparent black
    assert close(decode_image(png(la)).pixels[112, 112], WHITE, 5)


def test_palette_png_with_transparency_is_composited_on_white():
    p = Image.new("P", (64, 64), 1)
    p.putpalette([0, 0, 0] + list(RED) + [0, 0, 0] * 254)
    p.paste(0, (0, 0, 32, 64))  # index 0 is transparent black
    out = decode_image(png(p, transparency=0))
    assert close(out.pixels[112, 20], WHITE, 5) and close(out.pixels[112, 200], RED, 5)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert close(decode_image(buf.getvalue()).pixels[112, 112], RED, 10)


def test_grayscale_becomes_three_equal_channels():
    out = decode_image(png(Image.new("L", (30, 30), 77)))
    assert tuple(out.pixels[112, 112]) == (77, 77, 77)


def test_large_jpeg_in_draft_mode_matches_a_full_decode(photos):
    big = Image.open(io.BytesIO(photos["kite"])).resize((3000, 2000))
    data = jpeg(big, quality=92)
    fast = decode_image(data).pixels.astype(int)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 149), Image.Resampling.BICUBIC)).astype(int)
    top = (224 - 149) // 2
    assert np.abs(fast[top:top + 149] - full).mean() < 4


def test_truncated_jpeg_is_corrupt(photos):
    assert reason_of(photos["dog"][: len(photos["dog"]) // 2]) == "corrupt_image"


def test_html_is_not_an_image():
    with pytest.raises(StageError) as info:
        decode_image(b"<!DOCTYPE html><html><body>Not found</body></html>")
    assert info.value.reason == "not_an_image" and "HTML" in info.value.detail


def test_empty_body():
    assert reason_of(b"") == "empty_body"


def bomb_png(width, height) -> bytes:
    """A tiny PNG whose header claims a huge size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding():
    assert reason_of(bomb_png(100_000, 100_000)) == "decompression_bomb"  # Pillow's own hard limit
    assert reason_of(bomb_png(5000, 5000), DecodeConfig(max_pixels=10_000_000)) == "decompression_bomb"


@pytest.mark.model  # imports Keras, and so TensorFlow: seconds the fast tier does without
def test_vgg16_preprocess_matches_keras():
    from keras.applications.vgg16 import preprocess_input

    batch = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(vgg16_preprocess(batch), preprocess_input(batch.astype(np.float32)), atol=1e-4)


def test_border_colour_is_the_median_of_the_edges():
    img = Image.new("RGB", (10, 10), (10, 20, 30))
    img.paste(Image.new("RGB", (6, 6), RED), (2, 2))
    assert border_colour(img) == (10, 20, 30)
