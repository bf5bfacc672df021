"""Thumbnails: made from the image decoded for the model, packed with the run, skipped without loss."""
import io

import pyarrow.parquet as pq
from PIL import Image

from conftest import jpeg, png
from fakes import FakeModelHandler
from pipeline_helpers import by_id, run_pipeline, write_manifest

from imgsim.embed.decode import DecodeConfig, decode_image
from imgsim.thumbnails.make import make_thumbnail
from imgsim.thumbnails.packs import SCHEMA


def test_a_thumbnail_is_the_models_resized_image_as_webp(photos):
    decoded = decode_image(photos["dog"], DecodeConfig())  # 768 x 576: long side 224 once resized
    thumbnail = make_thumbnail(decoded.resized)
    shown = Image.open(io.BytesIO(thumbnail.data))
    assert shown.format == "WEBP" and shown.size == (thumbnail.width, thumbnail.height) == (224, 168)
    assert len(thumbnail.data) < 30_000


def test_a_panorama_in_crop_mode_is_shrunk_to_256_on_its_long_side():
    wide = jpeg(Image.linear_gradient("L").resize((2400, 300)).convert("RGB"))
    decoded = decode_image(wide, DecodeConfig(resize="crop"))
    assert decoded.resized.size == (1792, 224)
    thumbnail = make_thumbnail(decoded.resized)
    assert (thumbnail.width, thumbnail.height) == (256, 32)


def test_an_image_that_cannot_be_encoded_gives_no_thumbnail_and_no_error():
    assert make_thumbnail(Image.new("RGB", (0, 0))) is None


def test_a_run_packs_one_thumbnail_per_embedded_row_and_none_with_no_thumbnails(server, photos, notop_weights,
                                                                                 tmp_path):
    rows = [{"id": n, "url": server.file(f"/{n}.jpg", photos[n])} for n in ("dog", "eagle", "kite")]
    rows.append({"id": "clear", "url": server.file("/clear.png", png(Image.new("RGBA", (40, 30), (0, 0, 0, 0))),
                                                      "image/png")})
    rows.append({"id": "broken", "url": server.file("/broken.jpg", b"<html>no</html>", "text/html")})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    result = run_pipeline("--input", manifest, "--output", str(out), "--run-id", "t", "--no-index",
                          "--weights", notop_weights, "--layer", "pool", handler=FakeModelHandler())
    packs = list((out / "runs" / "t" / "thumbnails").glob("*.parquet"))
    assert packs and all(pq.read_schema(p).remove_metadata().equals(SCHEMA) for p in packs)
    stored = {r["id"]: r for p in packs for r in pq.read_table(p).to_pylist()}
    embedded = by_id(result["embeddings"])
    assert set(stored) == set(embedded) == {"dog", "eagle", "kite", "clear"}  # the broken row has none
    for item_id, row in stored.items():
        assert row["sha256"] == embedded[item_id]["sha256"] and row["format"] == "webp"
        assert Image.open(io.BytesIO(row["thumbnail"])).size == (row["width"], row["height"])
    assert "thumbnail" not in result["embeddings"].column_names  # the embeddings files stay as they were

    plain = run_pipeline("--input", manifest, "--output", str(tmp_path / "plain"), "--run-id", "t", "--no-index",
                         "--no-thumbnails", "--weights", notop_weights, "--layer", "pool", handler=FakeModelHandler())
    assert plain["embeddings"].num_rows == 4
    assert not list((tmp_path / "plain" / "runs" / "t").glob("thumbnails/*.parquet"))
