"""Finding VGG16 weights and naming them by checksum.

``--weights`` is ``imagenet`` (the official files Keras uses, downloaded once
and checked against their published MD5), a local path, or a gs:// URI (copied once into
a local cache, because Keras loads from the file system). Downloads and copies
go to imgsim's one cache directory (imgsim.storage.cache_dir), under weights/. The checksum goes
into the model signature, so two runs with the same weights agree however the
file was reached.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

from imgsim.storage import ObjectStore, cache_dir as imgsim_cache_dir, file_digest, is_gcs, replacing, sha256_file

IMAGENET = "imagenet"
_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"


@dataclasses.dataclass(frozen=True)
class RemoteWeights:
    """A weights file at a URL with a known MD5 (download_remote fetches it)."""

    fname: str
    url: str
    md5: str


# The files keras.applications.VGG16(weights="imagenet") uses (tests check these against Keras).
IMAGENET_WITH_TOP = RemoteWeights(
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    _KERAS_BASE + "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "64373286793e3c8b2b4e3219cbf3544b")
IMAGENET_NO_TOP = RemoteWeights(
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    _KERAS_BASE + "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "6d6bbae143d832006294945121d1f1fc")


@dataclasses.dataclass(frozen=True)
class LocalWeights:
    path: str
    checksum: str


def imagenet_file(include_top: bool) -> RemoteWeights:
    return IMAGENET_WITH_TOP if include_top else IMAGENET_NO_TOP


def weights_checksum(spec: str, include_top: bool, store: ObjectStore) -> str:
    """The checksum the signature records, fetching the file only when it must be hashed."""
    if spec == IMAGENET:
        return "md5:" + imagenet_file(include_top).md5
    return resolve(spec, include_top, store).checksum


def resolve(spec: str, include_top: bool, store: ObjectStore, cache_dir: Optional[str] = None,
            imagenet: Optional[RemoteWeights] = None) -> LocalWeights:
    """A local file for the weights spec; raises FileNotFoundError or ValueError with a clear message.

    cache_dir: where downloads and gs:// copies go (default: imgsim's cache, weights/)."""
    cache_dir = cache_dir or imgsim_cache_dir("weights")
    if spec == IMAGENET:
        return download_remote(imagenet or imagenet_file(include_top), cache_dir)
    if is_gcs(spec):
        return _cached_copy(spec, store, cache_dir)
    if "://" in spec:
        raise ValueError(f"--weights {spec!r}: use 'imagenet', a local path or a gs:// URI")
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--weights {spec!r}: no such file")
    return LocalWeights(path, "sha256:" + sha256_file(path))


def download_remote(remote: RemoteWeights, cache_dir: str, timeout_s: float = 60.0) -> LocalWeights:
    """The file in cache_dir once its MD5 is the published one, downloaded when absent or damaged.

    Why not keras.utils.get_file (same cache layout, same check): the launcher resolves the
    weights before any work, and importing Keras would cost it TensorFlow's seconds and hundreds
    of MB just to fetch a file. The download goes to a temporary file renamed into place only after
    its MD5 matched (imgsim.storage.replacing), so a broken or concurrent download never leaves a
    torn file under the name."""
    path = os.path.join(cache_dir, remote.fname)
    if os.path.isfile(path) and file_digest(path, "md5") == remote.md5:
        return LocalWeights(path, "md5:" + remote.md5)
    try:
        import requests
        digest = hashlib.md5()
        with requests.get(remote.url, stream=True, timeout=timeout_s) as response, replacing(path) as f:
            response.raise_for_status()
            for block in response.iter_content(1 << 20):
                f.write(block)
                digest.update(block)
            if digest.hexdigest() != remote.md5:  # raised inside: the part file goes, path stays as it was
                raise ValueError(f"its MD5 is {digest.hexdigest()}, not the published {remote.md5}")
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"could not download the ImageNet weights from {remote.url} ({reason}); "
                         "check the network, or pass --weights a local or gs:// copy") from None
    return LocalWeights(path, "md5:" + remote.md5)


def _cached_copy(uri: str, store: ObjectStore, cache_dir: str) -> LocalWeights:
    generation = store.generation(uri)
    if generation is None:
        raise FileNotFoundError(f"--weights {uri!r}: no such object")
    # Keyed by URI and generation: a replaced object is fetched again, an unchanged one never.
    key = hashlib.sha256(f"{uri}#{generation}".encode()).hexdigest()[:16]
    local = os.path.join(cache_dir, f"{key}-{os.path.basename(uri)}")
    if not os.path.exists(local):
        store.download_to_file(uri, local)
    return LocalWeights(local, "sha256:" + sha256_file(local))
