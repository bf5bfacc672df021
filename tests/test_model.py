"""VGG16 with the real ImageNet convolutional weights (and seeded fc layers where needed)."""
import hashlib
import inspect
import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import jpeg

pytestmark = pytest.mark.model
from imgsim.embed import weights
from imgsim.embed.decode import decode_image
from imgsim.embed.model import ModelSpec, WeightsMismatch, build_model, load_embedder
from imgsim.storage import ObjectStore


@pytest.fixture(scope="module")
def pool_embedder(notop_weights):
    return load_embedder(ModelSpec(layer="pool", weights=notop_weights), notop_weights)


def crop(data: bytes, box) -> bytes:
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    return jpeg(img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h))))


def test_pool_vectors_are_unit_length_and_two_crops_of_a_photo_are_nearest(pool_embedder, photos):
    names = ["dog", "eagle", "giraffe", "horses", "kite", "person", "scream"]
    images = [photos[n] for n in names] + [crop(photos["giraffe"], (0.0, 0.0, 0.8, 0.9)),
                                           crop(photos["giraffe"], (0.15, 0.1, 1.0, 1.0))]
    vectors, valid = pool_embedder(np.stack([decode_image(b).pixels for b in images]))
    assert vectors.shape == (9, 512) and vectors.dtype == np.float32 and valid.all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    crop_a, crop_b = 7, 8
    others = [i for i in range(7) if names[i] != "giraffe"]
    assert sims[crop_a, crop_b] > max(sims[crop_a, i] for i in others)
    assert sims[crop_a, crop_b] > 0.8


def test_fc_layers_give_4096_dimensions(full_weights, photos):
    batch = np.stack([decode_image(photos[n]).pixels for n in ("dog", "kite")])
    fc1 = load_embedder(ModelSpec(layer="fc1", weights=full_weights), full_weights)(batch)[0]
    fc2 = load_embedder(ModelSpec(layer="fc2", weights=full_weights), full_weights)(batch)[0]
    assert fc1.shape == fc2.shape == (2, 4096)
    np.testing.assert_allclose(np.linalg.norm(fc2, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(fc1, fc2)


def test_a_notop_file_cannot_serve_fc_layers(notop_weights):
    with pytest.raises(WeightsMismatch, match="no fc1/fc2 weights.*--layer pool"):
        build_model(ModelSpec(layer="fc2"), notop_weights)


def test_weights_of_another_architecture_are_refused(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(str(path))
    with pytest.raises(WeightsMismatch, match="does not fit VGG16"):
        build_model(ModelSpec(layer="pool"), str(path))
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(WeightsMismatch, match="does not fit VGG16"):
        build_model(ModelSpec(layer="pool"), str(junk))
    with pytest.raises(WeightsMismatch, match=r"\.weights\.h5"):
        build_model(ModelSpec(layer="pool"), str(tmp_path / "model.bin"))


def test_bf16_agrees_with_fp32(notop_weights, pool_embedder, photos):
    bf16 = load_embedder(ModelSpec(layer="pool", precision="bf16"), notop_weights)
    batch = np.stack([decode_image(b).pixels for b in photos.values()])
    a, b = pool_embedder(batch)[0], bf16(batch)[0]
    assert (a * b).sum(axis=1).min() > 0.99


def test_unknown_layer_and_precision_are_refused():
    with pytest.raises(ValueError, match="unknown layer"):
        ModelSpec(layer="fc3")
    with pytest.raises(ValueError, match="unknown precision"):
        ModelSpec(precision="fp8")


def test_imagenet_files_are_the_ones_keras_uses():
    from keras.src.applications import vgg16

    source = inspect.getsource(vgg16)
    for remote in (weights.IMAGENET_WITH_TOP, weights.IMAGENET_NO_TOP):
        assert remote.md5 in source
    assert weights.IMAGENET_WITH_TOP.url == vgg16.WEIGHTS_PATH
    assert weights.IMAGENET_NO_TOP.url == vgg16.WEIGHTS_PATH_NO_TOP


def test_remote_weights_download_once_with_md5_check(server, notop_weights, tmp_path):
    data = open(notop_weights, "rb").read()
    url = server.file("/keras/vgg16_notop.h5", data, "application/octet-stream")
    good = weights.RemoteWeights("vgg16_notop.weights.h5", url, hashlib.md5(data).hexdigest())
    local = weights.download_remote(good, cache_dir=str(tmp_path))
    assert open(local.path, "rb").read() == data and local.checksum == "md5:" + good.md5
    weights.download_remote(good, cache_dir=str(tmp_path))
    assert server.hits("/keras/vgg16_notop.h5") == 1  # cached

    bad = weights.RemoteWeights("other.weights.h5", url, "0" * 32)
    with pytest.raises(ValueError, match="could not download the ImageNet weights.*MD5"):
        weights.download_remote(bad, cache_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["vgg16_notop.weights.h5"]  # nothing torn or left over


def test_imagenet_checksum_needs_no_download():
    assert weights.weights_checksum("imagenet", include_top=True, store=ObjectStore()) == "md5:" + weights.IMAGENET_WITH_TOP.md5


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        weights.resolve(str(tmp_path / "missing.weights.h5"), include_top=False, store=ObjectStore())
    with pytest.raises(ValueError, match="imagenet"):
        weights.resolve("https://example.org/w.h5", include_top=False, store=ObjectStore())


def test_a_batch_too_big_for_accelerator_memory_is_split(pool_embedder, photos):
    """No GPU here: the real model, with a forward pass that runs out of memory above two images."""
    import tensorflow as tf

    batch = np.stack([decode_image(photos[n]).pixels for n in ("dog", "eagle", "kite", "person", "scream")])
    expected, _ = pool_embedder(batch)
    real_forward, sizes = pool_embedder._forward, []

    def small_memory(x):
        sizes.append(int(x.shape[0]))
        if x.shape[0] > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_forward(x)

    pool_embedder._forward = small_memory
    try:
        vectors, valid = pool_embedder(batch)
    finally:
        pool_embedder._forward = real_forward
    assert valid.all() and max(s for s in sizes if s <= 2) == 2
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
