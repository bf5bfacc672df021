"""The GCS JSON API on 127.0.0.1: PyPI's gcp-storage-emulator, plus the one precondition we need.

The emulator serves the uploads, downloads, listings and batch requests that
Beam's file sinks and google-cloud-storage make. It ignores
`ifGenerationMatch`, which the LATEST pointer's compare-and-swap relies on, so
uploads are wrapped here to answer 412 Precondition Failed as GCS does.
"""
from __future__ import annotations

import os
import socket
from http import HTTPStatus

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

BUCKET = "imgsim-test"


def _object_name(request):
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or {}).get("name") or data.get("name")
    return None


def _with_generation_precondition(insert):
    def guarded(request, response, storage, *args, **kwargs):
        expected = request.query.get("ifGenerationMatch")
        if expected is not None:
            name = _object_name(request)
            try:
                current = int(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                current = 0
            if current != int(expected[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed",
                                         "errors": [{"reason": "conditionNotMet"}]}})
                return None
        return insert(request, response, storage, *args, **kwargs)

    guarded.imgsim_guarded = True
    return guarded


def _install_precondition_support():
    if getattr(objects.insert, "imgsim_guarded", False):
        return
    original = objects.insert
    guarded = _with_generation_precondition(original)
    for _, methods in emulator_server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is original:
                methods[method] = guarded
    objects.insert = guarded


class GcsEmulator:
    def __init__(self, bucket: str = BUCKET):
        _install_precondition_support()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.bucket = bucket
        self._server = emulator_server.create_server("127.0.0.1", self.port, in_memory=True,
                                                     default_bucket=bucket)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "GcsEmulator":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def env(self) -> dict:
        return {"STORAGE_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": "imgsim-test"}

    def wipe(self) -> None:
        import urllib.request

        urllib.request.urlopen(self.host + "/wipe", timeout=5).read()
        from google.cloud import storage

        storage.Client(project="imgsim-test").create_bucket(self.bucket)


def client():
    from google.cloud import storage

    assert os.environ.get("STORAGE_EMULATOR_HOST"), "start the emulator first"
    return storage.Client(project="imgsim-test")
