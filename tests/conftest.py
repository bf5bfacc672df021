"""Shared fixtures: the real weights and images in ../shared, a local HTTP server,
Google auth stubbed (no credential retries), and a GCS emulator on 127.0.0.1."""
from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMGSIM_SHARED_DIR", ROOT.parent / "shared"))
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from catalogue_server import CatalogueServer  # noqa: E402


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): two workers per core, up to 16. A third of the fast tier's time
    waits on sockets, deadlines and subprocesses (servers that hang on purpose, download timeouts,
    driver processes), and a second worker per core runs tests in that time; the full suite takes
    as long either way (measured on two cores: fast tier 55 s with two workers, 52 s with four)."""
    return min(2 * (os.cpu_count() or 1), 16)


# Modules collected first (see pytest_collection_modifyitems).
COLLECTED_FIRST = ("test_faults",)


def pytest_collection_modifyitems(config, items):
    """test_faults first. Its module fixture is one pipeline run that mostly waits (download
    deadlines, servers that hang on purpose: 7 s). Collected in name order, xdist's work stealing
    split the module between two workers near the end of the session, and each ran the fixture;
    first, one worker runs it once while the others compute (fast tier: ~52 s -> ~49 s on two cores)."""
    items.sort(key=lambda item: getattr(item.module, "__name__", None) not in COLLECTED_FIRST)


MISSING_SHARED = (f"the shared assets are missing: expected {SHARED} (set IMGSIM_SHARED_DIR; README, "
                  "'Test assets')")


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared; a test that needs it is skipped, with the reason, where it is missing (the unit
    tests that do not, run)."""
    if not (SHARED / "models" / "vgg16_imagenet_notop.weights.h5").is_file():
        pytest.skip(MISSING_SHARED)
    return SHARED


@pytest.fixture(scope="session")
def notop_weights(shared) -> str:
    return str(shared / "models" / "vgg16_imagenet_notop.weights.h5")


@pytest.fixture(scope="session")
def photos(shared) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((shared / "data" / "photos").glob("*.jpg"))}


@pytest.fixture(scope="session")
def full_weights(tmp_path_factory, notop_weights) -> str:
    """A full VGG16 weights file: the real convolutional weights, seeded random fc1/fc2/predictions."""
    import keras

    keras.utils.set_random_seed(7)
    model = keras.applications.VGG16(weights=None, include_top=True)
    base = keras.applications.VGG16(weights=None, include_top=False)
    base.load_weights(notop_weights)
    for layer in base.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    path = tmp_path_factory.mktemp("weights") / "vgg16_full_random_top.weights.h5"
    model.save_weights(str(path))
    del model, base
    return str(path)


@pytest.fixture
def server():
    s = CatalogueServer().start()
    yield s
    s.stop()


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """imgsim's cache (weights copies, index copies, int8 calibrations) is the session's own, never
    the developer's: what one test leaves there is what a later test of the session may find."""
    saved = os.environ.get("IMGSIM_CACHE_DIR")
    os.environ["IMGSIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("imgsim-cache"))
    yield
    if saved is None:
        os.environ.pop("IMGSIM_CACHE_DIR", None)
    else:
        os.environ["IMGSIM_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def anonymous_google(monkeypatch):
    """Without this, every google-auth lookup retries the metadata server for ~20 s."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "imgsim-test"))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "imgsim-test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(pixels, quality: int = 90, **save_args) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(buf, "JPEG", quality=quality, **save_args)
    return buf.getvalue()


def png(image, **save_args) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **save_args)
    return buf.getvalue()


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator for the whole session; STORAGE_EMULATOR_HOST points every client at it."""
    from gcs_emulator import GcsEmulator

    emulator = GcsEmulator().start()
    saved = {k: os.environ.get(k) for k in emulator.env()}
    os.environ.update(emulator.env())
    yield emulator
    emulator.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    """A private cache for gs:// weights copies."""
    monkeypatch.setenv("IMGSIM_CACHE_DIR", str(tmp_path / "cache" / "imgsim"))
    return tmp_path / "cache"
