"""Runners beyond DirectRunner: where the workers run decides which paths a run may name and
whether the launcher waits; the whole run and `imgsim index` on Beam's portable runner (an
embedded job service, a loopback SDK worker) give what DirectRunner gives."""
import numpy as np
import pytest

from fakes import FakeModelHandler
from imgsim.config.flags import ConfigError
from imgsim.config.parser import parse_index_args, parse_run_args
from imgsim.pipelines import index_pipeline, launcher
from imgsim.pipelines.beam_options import pipeline_options, shares_filesystem, submits_and_returns
from imgsim.storage import ObjectStore
from pipeline_helpers import by_id, read_run

PORTABLE = ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"]


@pytest.mark.parametrize("args, shares, returns", [
    ([], True, False),
    (["--runner", "DirectRunner", "--direct_running_mode", "multi_processing"], True, False),
    (PORTABLE, True, False),
    (["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "PROCESS",
      "--environment_config", '{"command": "/opt/apache/beam/boot"}'], True, False),
    (["--runner", "PortableRunner", "--job_endpoint", "flink:8099", "--environment_type", "PROCESS"], False, False),
    (["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "DOCKER"], False, False),
    (["--runner", "FlinkRunner", "--environment_type", "EXTERNAL", "--environment_config", "w:50000"], False, False),
    (["--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp_location", "gs://b/t",
      "--sdk_container_image", "img"], False, True),
])
def test_where_the_workers_run_decides_paths_and_waiting(args, shares, returns):
    options = pipeline_options(args)
    assert (shares_filesystem(options), submits_and_returns(options)) == (shares, returns)


def test_a_runner_module_that_cannot_be_imported_is_one_line():
    with pytest.raises(ConfigError, match="--runner nowhere.at_all.Runner: cannot import nowhere.at_all"):
        pipeline_options(["--runner", "nowhere.at_all.Runner"])


def test_local_paths_are_refused_when_the_workers_are_containers(tmp_path, photos):
    (tmp_path / "a.jpg").write_bytes(photos["dog"])
    options, beam_args = parse_run_args(["--input", str(tmp_path / "*.jpg"), "--output", str(tmp_path / "out"),
                                         "--runner", "PortableRunner", "--job_endpoint", "embed",
                                         "--environment_type", "DOCKER"])
    with pytest.raises(ConfigError, match="--input .* is a local path, which this runner's workers cannot read"):
        launcher.launch(options, beam_args, ObjectStore(), handler=FakeModelHandler())


@pytest.mark.model  # the slow tier: worker processes
def test_a_run_and_a_reindex_on_the_portable_runner_match_directrunner(shared, notop_weights, tmp_path):
    photos = f"{shared}/data/photos/*.jpg"
    common = ["--input", photos, "--weights", notop_weights, "--layer", "pool", "--progress-interval", "0"]
    runs = {}
    for name, runner in (("direct", ["--runner", "DirectRunner"]), ("portable", PORTABLE)):
        options, beam_args = parse_run_args([*common, "--output", str(tmp_path / name), "--run-id", "r1", *runner])
        summary = launcher.launch(options, beam_args, ObjectStore(), handler=FakeModelHandler())
        assert summary.accounted and summary.counts["embedded"] == 7 and summary.index["published"]
        runs[name] = by_id(read_run(str(tmp_path / name), "r1")["embeddings"])
    assert runs["portable"].keys() == runs["direct"].keys()
    for item, row in runs["direct"].items():
        np.testing.assert_allclose(runs["portable"][item]["embedding"], row["embedding"], rtol=0, atol=1e-6)

    options, beam_args = parse_index_args(["--embeddings", str(tmp_path / "portable" / "runs" / "r1" / "embeddings"
                                                                / "*.parquet"),
                                           "--output", str(tmp_path / "reindexed"), "--run-id", "i1", *PORTABLE])
    report = index_pipeline.launch(options, beam_args, ObjectStore())
    assert report["published"] and report["count"] == 7


@pytest.fixture(scope="module")
def dask_cluster():
    """Two worker processes on this machine, as `dask scheduler` and two `dask worker`s would be."""
    distributed = pytest.importorskip("dask.distributed")
    import os

    tests = os.path.dirname(os.path.abspath(__file__))  # the workers unpickle tests.fakes' handler
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = tests + (os.pathsep + saved if saved else "")
    try:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield cluster
    cluster.close()


@pytest.mark.model  # the slow tier: worker processes
def test_a_run_and_a_reindex_on_a_dask_cluster_match_directrunner(shared, notop_weights, tmp_path, dask_cluster):
    dask = ["--runner", "imgsim.pipelines.dask_runner.DaskRunner", "--dask_client_address",
            dask_cluster.scheduler_address]
    options = pipeline_options(dask)
    assert shares_filesystem(options) and not submits_and_returns(options)
    common = ["--input", f"{shared}/data/photos/*.jpg", "--weights", notop_weights, "--layer", "pool",
              "--progress-interval", "0", "--run-id", "r1"]
    runs = {}
    for name, runner in (("direct", ["--runner", "DirectRunner"]), ("dask", dask)):
        options, beam_args = parse_run_args([*common, "--output", str(tmp_path / name), *runner])
        summary = launcher.launch(options, beam_args, ObjectStore(), handler=FakeModelHandler())
        assert summary.accounted and summary.counts["embedded"] == 7 and summary.index["published"]
        runs[name] = read_run(str(tmp_path / name), "r1")
    assert len(runs["dask"]["embeddings"]) == 7  # every row once
    direct, dask_rows = by_id(runs["direct"]["embeddings"]), by_id(runs["dask"]["embeddings"])
    assert dask_rows.keys() == direct.keys()
    for item, row in direct.items():
        np.testing.assert_allclose(dask_rows[item]["embedding"], row["embedding"], rtol=0, atol=1e-6)

    options, beam_args = parse_index_args(["--embeddings", str(tmp_path / "dask" / "runs" / "r1" / "embeddings"
                                                                / "*.parquet"),
                                           "--output", str(tmp_path / "reindexed"), "--run-id", "i1", *dask])
    report = index_pipeline.launch(options, beam_args, ObjectStore())
    assert report["published"] and report["count"] == 7


def test_a_dask_cluster_elsewhere_is_refused_local_paths(tmp_path):
    pytest.importorskip("dask.distributed")
    options = pipeline_options(["--runner", "imgsim.pipelines.dask_runner.DaskRunner",
                                "--dask_client_address", "tcp://10.1.2.3:8786"])
    assert not shares_filesystem(options)


def slow_images(server, count: int, seconds: float) -> list[dict]:
    """count rows whose images take `seconds` each to serve: a run long enough to lose a worker in."""
    import io
    import time

    from PIL import Image

    def serving(data):
        def respond(h):
            time.sleep(seconds)
            h.send(200, data, content_type="image/jpeg")
        return respond

    rows = []
    for i in range(count):
        sink = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(sink, "JPEG")
        rows.append({"id": f"r{i:02d}", "url": server.route(f"/slow/{i}.jpg", serving(sink.getvalue()))})
    return rows


def kill_when_busy(server, find_workers, served: int):
    """Once `served` images went out, SIGKILL one worker process (found by find_workers()); returns
    the thread and a list that receives the killed pid."""
    import threading
    import time

    killed = []

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(server.log) < served:
            time.sleep(0.05)
        workers = find_workers()
        if workers:
            workers[0].kill()
            killed.append(workers[0].pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


@pytest.mark.model  # the slow tier: worker processes
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the dead worker's channels
def test_a_killed_worker_process_costs_the_rows_it_held_not_the_run(tmp_path, notop_weights, monkeypatch, caplog):
    """Multi-process DirectRunner, an SDK worker SIGKILLed mid-run: the job fails, the launcher starts
    it again as the same run, which resumes from the checkpoint; every row once, no stray files."""
    import glob
    import os

    import psutil

    from catalogue_server import CatalogueServer
    from pipeline_helpers import write_manifest

    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))  # workers unpickle fakes
    server = CatalogueServer().start()
    try:
        manifest = write_manifest(tmp_path / "m.csv", slow_images(server, 40, 0.3))

        def sdk_workers():
            return [p for p in psutil.Process().children(recursive=True)
                    if p.name().startswith("python") and "sdk_worker_main" in " ".join(p.cmdline())]

        watcher, killed = kill_when_busy(server, sdk_workers, served=12)
        options, beam_args = parse_run_args([
            "--input", manifest, "--output", str(tmp_path / "out"), "--run-id", "k1", "--weights", notop_weights,
            "--layer", "pool", "--allow-private-addresses", "--progress-interval", "0", "--checkpoint-seconds", "1",
            "--runner", "DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
        summary = launcher.launch(options, beam_args, ObjectStore(), handler=FakeModelHandler())
        watcher.join(10)
    finally:
        server.stop()
    assert killed, "no worker process was found to kill"
    assert "attempt 1 of 2 failed" in caplog.text  # the kill took the job down; the second attempt finished it
    assert summary.counts["resumed"] + summary.counts["new"] == 40  # resumed: what the first one checkpointed
    assert summary.accounted and summary.counts["embedded"] == 40 and summary.index["published"]
    run = read_run(str(tmp_path / "out"), "k1")
    ids = run["embeddings"].column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i:02d}" for i in range(40))  # every row exactly once
    files = glob.glob(str(tmp_path / "out" / "runs" / "k1" / "embeddings" / "*.parquet"))
    assert sum(pq_rows(f) for f in files) == 40  # no file of the dead attempt left beside the committed ones


@pytest.mark.model  # the slow tier: worker processes
def test_a_killed_dask_worker_is_replaced_and_its_tasks_run_again(tmp_path, notop_weights, dask_cluster):
    import glob

    import psutil

    from catalogue_server import CatalogueServer
    from pipeline_helpers import write_manifest

    server = CatalogueServer().start()
    try:
        manifest = write_manifest(tmp_path / "m.csv", slow_images(server, 40, 0.3))
        client = __import__("dask.distributed", fromlist=["Client"]).Client(dask_cluster.scheduler_address)
        pids = list(client.run(lambda: __import__("os").getpid()).values())
        client.close()
        watcher, killed = kill_when_busy(server, lambda: [psutil.Process(pids[0])], served=12)
        options, beam_args = parse_run_args([
            "--input", manifest, "--output", str(tmp_path / "out"), "--run-id", "d1", "--weights", notop_weights,
            "--layer", "pool", "--allow-private-addresses", "--progress-interval", "0",
            "--runner", "imgsim.pipelines.dask_runner.DaskRunner", "--dask_client_address",
            dask_cluster.scheduler_address])
        summary = launcher.launch(options, beam_args, ObjectStore(), handler=FakeModelHandler())
        watcher.join(10)
    finally:
        server.stop()
    assert killed
    assert summary.accounted and summary.counts["embedded"] == 40 and summary.index["published"]
    ids = read_run(str(tmp_path / "out"), "d1")["embeddings"].column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i:02d}" for i in range(40))
    files = glob.glob(str(tmp_path / "out" / "runs" / "d1" / "embeddings" / "*.parquet"))
    assert sum(pq_rows(f) for f in files) == 40


def pq_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
