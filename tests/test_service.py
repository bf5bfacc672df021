"""`imgsim serve` in production, over real HTTP against a real process: it follows LATEST (a new
run and a rollback reach it with no failed request), keeps serving the old index when a new one
is damaged and says why, survives its old run's pruning, and holds its edge against hostile
clients (slow headers, foreign Host, cross-origin posts, malformed bodies, vanishing clients)."""
import hashlib
import json
import os
import shutil
import socket
import threading
import time

import pytest
import requests

import imgsim
from imgsim.cli import main
from imgsim.index.latest import Latest, read_latest, swap_latest
from imgsim.storage import ObjectStore
from pipeline_helpers import site_data
from test_index import clustered
from test_serve import Served

N = 200


def build(out, run_id, seed):
    imgsim.build_index(str(out), ids=[f"obj-{i}" for i in range(N)], vectors=clustered(N, dim=16, seed=seed),
                       neighbors_k=5, run_id=run_id, metadata={"title": [f"{run_id} {i}" for i in range(N)]})


@pytest.fixture
def service(tmp_path):
    out = tmp_path / "out"
    build(out, "r1", seed=1)
    env = {**os.environ, "IMGSIM_CACHE_DIR": str(tmp_path / "imgsim-cache")}
    served = Served("--index", str(out), "--refresh-seconds", "0.3", "--header-timeout", "1", env=env)
    yield {"url": served.url, "out": out, "proc": served.proc, "tmp": tmp_path}
    served.stop()


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail("the service never got there")


class SteadyClients:
    """Threads asking /api/similar without a pause; every answer and error is kept."""

    def __init__(self, url, threads=3):
        self.url, self.stop = url, threading.Event()
        self.runs, self.errors = [], []
        self.by_thread = [[] for _ in range(threads)]  # each client's own sequence is ordered
        self.workers = [threading.Thread(target=self._ask, args=(i,), daemon=True) for i in range(threads)]
        [w.start() for w in self.workers]

    def _ask(self, number):
        session = requests.Session()
        while not self.stop.is_set():
            try:
                answer = session.get(self.url + "api/similar/obj-3", params={"k": 5}, timeout=30)
                if answer.status_code != 200 or len(answer.json()["results"]) != 5:
                    self.errors.append((answer.status_code, answer.text[:200]))
                else:
                    self.runs.append(answer.json()["run_id"])
                    self.by_thread[number].append(answer.json()["run_id"])
            except Exception as e:  # a refused or dropped connection is a failed request too
                self.errors.append(repr(e))

    def finish(self):
        self.stop.set()
        [w.join(30) for w in self.workers]


def test_a_new_run_and_a_rollback_reach_a_running_service_with_no_failed_request(service):
    url = service["url"]
    clients = SteadyClients(url)
    try:
        wait_for(lambda: len(clients.runs) > 20)
        build(service["out"], "r2", seed=2)  # a scheduled run publishes
        wait_for(lambda: requests.get(url + "healthz", timeout=10).json()["run_id"] == "r2")
        wait_for(lambda: clients.runs[-1:] == ["r2"])
        assert main(["rollback", "--output", str(service["out"]), "--run-id", "r1"]) == 0
        wait_for(lambda: requests.get(url + "healthz", timeout=10).json()["run_id"] == "r1")
        wait_for(lambda: clients.runs[-1:] == ["r1"])
    finally:
        clients.finish()
    assert not clients.errors, clients.errors[:5]
    for runs in clients.by_thread:  # one client never sees the old run after the new one, nor flips
        seen = [run for i, run in enumerate(runs) if i == 0 or run != runs[i - 1]]
        assert seen == ["r1", "r2", "r1"], seen
    health = requests.get(url + "healthz", timeout=10).json()
    assert health["follows_latest"] and health["pending_run_id"] is None and health["refresh_error"] is None


def test_a_damaged_new_run_leaves_the_old_one_serving_and_healthz_says_why(service):
    url, out = service["url"], service["out"]
    staging = service["tmp"] / "staging"
    build(staging, "r2", seed=2)
    shutil.copytree(staging / "runs" / "r2", out / "runs" / "r2")
    with open(out / "runs" / "r2" / "index" / "ids.parquet", "r+b") as f:  # damaged after publishing
        f.seek(100)
        f.write(b"tampered")
    store = ObjectStore()
    manifest = (out / "runs" / "r2" / "index" / "manifest.json").read_bytes()
    swap_latest(store, str(out), Latest.for_run("r2", hashlib.sha256(manifest).hexdigest()),
                read_latest(store, str(out)).generation)
    health = wait_for(lambda: (lambda h: h if h["pending_run_id"] == "r2" else None)(
        requests.get(url + "healthz", timeout=10).json()))
    assert health["run_id"] == "r1" and "ids.parquet does not match the manifest" in health["refresh_error"]
    answer = requests.get(url + "api/similar/obj-3", params={"k": 3}, timeout=10).json()
    assert answer["run_id"] == "r1" and len(answer["results"]) == 3


def test_the_explorer_follows_the_api_and_survives_its_old_run_being_pruned(service):
    url, out = service["url"], service["out"]
    page = requests.get(url, timeout=10).text
    assert requests.get(url + site_data(page), timeout=10).json()["run_id"] == "r1"
    build(out, "r2", seed=2)
    wait_for(lambda: requests.get(url + "healthz", timeout=10).json()["run_id"] == "r2")
    shutil.rmtree(out / "runs" / "r1")  # --keep-runs pruned it
    # the API swapped at once; r2's explorer is built in the background: until then `/` says so
    # (a JSON 503), never showing r1's
    seen = []

    def explorer_ready():
        page = requests.get(url, timeout=10)
        seen.append(page.status_code if page.status_code != 503 else page.json()["error"])
        return page if page.status_code == 200 else None

    page = wait_for(explorer_ready)
    assert all(s == 200 or "explorer of run r2 is being built" in s for s in seen), seen
    assert 'app.js"></script>' in page.text
    assert requests.get(url + site_data(page.text), timeout=10).json()["run_id"] == "r2"


def test_slow_headers_foreign_hosts_and_cross_origin_posts_are_refused(service):
    url = service["url"]
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    # half a request, never finished: closed after --header-timeout (1 s), not held
    half = socket.create_connection((host, int(port)))
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    half.settimeout(10)
    started = time.monotonic()
    assert half.recv(100) == b"" and time.monotonic() - started < 5
    half.close()
    # DNS rebinding: another name pointed at this address
    foreign = requests.get(url + "healthz", headers={"Host": "evil.example"}, timeout=10)
    assert foreign.status_code == 400 and "is not one this service answers to" in foreign.json()["error"]
    # a form on another site posting here
    posted = requests.post(url + "api/search", data={"url": "http://example.com/x.jpg"},
                           headers={"Origin": "http://evil.example"}, timeout=10)
    assert posted.status_code == 403 and "from another origin" in posted.json()["error"]
    same_site_form = requests.post(url + "api/search", data={"url": "http://example.com/x.jpg"}, timeout=10)
    assert same_site_form.status_code in (415, 501)
    # security headers on every answer, no CORS by default
    health = requests.get(url + "healthz", headers={"Origin": "http://evil.example"}, timeout=10)
    assert health.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in health.headers["content-security-policy"]
    assert "access-control-allow-origin" not in health.headers


def test_malformed_bodies_get_json_and_a_vanishing_client_costs_one_line(service):
    url = service["url"]
    nested = requests.post(url + "api/recommend", data=b"[" * 100_000, timeout=10,
                           headers={"Content-Type": "application/json"})
    assert nested.status_code == 400 and nested.json()["error"].startswith("the JSON body does not parse")
    for body, kind in ((b"\xff\xfe", "application/json"), (b"{}", "text/plain"), (b"--x\r\n", "multipart/form-data")):
        answer = requests.post(url + "api/recommend", data=body, headers={"Content-Type": kind}, timeout=10)
        assert 400 <= answer.status_code < 500 and answer.headers["content-type"] == "application/json", body
    # a client that promises a large upload and goes away
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    gone = socket.create_connection((host, int(port)))
    gone.sendall(b"POST /api/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"positive\": [")
    gone.close()
    assert requests.get(url + "healthz", timeout=10).json()["ok"]
    docs = requests.get(url + "api/docs", timeout=10)
    assert docs.status_code == 200 and "/api/similar/{item_id}" in docs.text and "cdn" not in docs.text.lower()
    assert "<script" not in docs.text  # nothing to fetch: it works offline


@pytest.mark.model  # the slow tier
def test_two_workers_serve_one_port_and_follow_latest(tmp_path):
    out = tmp_path / "out"
    build(out, "r1", seed=1)
    env = {**os.environ, "IMGSIM_CACHE_DIR": str(tmp_path / "imgsim-cache")}
    served = Served("--index", str(out), "--workers", "2", "--refresh-seconds", "0.3", env=env)
    try:
        clients = SteadyClients(served.url)
        try:
            wait_for(lambda: len(clients.runs) > 20)
            build(out, "r2", seed=2)
            try:
                wait_for(lambda: clients.runs[-3:] == ["r2"] * 3)
            except BaseException:
                print("RUNS", clients.runs[-10:], len(clients.runs), "ERRORS", clients.errors[-5:])
                raise
        finally:
            clients.finish()
        assert not clients.errors, clients.errors[:5]
    finally:
        served.stop()
