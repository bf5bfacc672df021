"""Runs that stop before their summary say so in a few lines, with the next step: a source found
unusable before the run, an API that goes down during it, Ctrl-C (and the resume it prints), a
failed start that leaves no run folder, and `imgsim runs` showing every state."""
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from fakes import FakeModelHandler
from imgsim.cli import main, resume_command
from imgsim.config.parser import parse_run_args
from imgsim.index.history import list_runs
from imgsim.pipelines.launcher import launch
from imgsim.runs.stops import RunFailed, RunInterrupted
from imgsim.storage import ObjectStore
from pipeline_helpers import write_manifest


def launch_fake(weights, *args):
    """`imgsim run` as the CLI launches it, with the fake model (the weights file is only signed)."""
    options, beam_args = parse_run_args(["--runner", "DirectRunner", "--progress-interval", "0",
                                         "--allow-private-addresses", "--weights", weights, "--layer", "pool", *args])
    return launch(options, beam_args, ObjectStore(), handler=FakeModelHandler())


@pytest.mark.model  # preflight checks the weights' fit (TensorFlow) before the network
def test_an_unreachable_or_blocked_museum_api_is_one_line_before_the_run(tmp_path, capsys, notop_weights):
    out = str(tmp_path / "out")
    closed = "http://127.0.0.1:9/api/artworks/"
    assert main(["run", "--input", "cma", "--cma-api-url", closed, "--allow-private-addresses", "--output", out,
                 "--weights", notop_weights, "--layer", "pool", "--max-retries", "0", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input cma: the API at http://127.0.0.1:9/api/artworks/ cannot be read" in err[0]
    assert "connection_error" in err[0] and "check the address (--cma-api-url)" in err[0]
    assert main(["run", "--input", "cma", "--cma-api-url", closed, "--output", out, "--weights", notop_weights,
                 "--layer", "pool", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blocked_address" in err[0], err
    assert not os.path.exists(os.path.join(out, "runs"))  # no empty run folder from a failed start


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys, server, photos):
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "dog", "url": server.file("/dog.jpg", photos["dog"])}])
    out = tmp_path / "out"
    assert main(["run", "--input", manifest, "--output", str(out), "--weights", str(tmp_path / "none.h5"),
                 "--run-id", "r1", "-q"]) == 2
    assert "none.h5" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_an_api_that_goes_down_during_the_run_fails_it_in_three_lines(server, tmp_path, notop_weights):
    def going_down(h):  # the total answers (before the run and when pages are planned); the pages fail
        if h.query.get("limit") == "1":
            h.send_json({"info": {"total": 36}, "data": []})
        else:
            h.send(503, b"down")

    api = server.route("/api/artworks/", going_down)
    out = tmp_path / "out"
    with pytest.raises(RunFailed) as failed:
        launch_fake(notop_weights, "--input", "cma", "--cma-api-url", api, "--cma-page-size", "10", "--output", str(out),
                    "--run-id", "r1", "--max-retries", "0")
    stop = failed.value
    lines = stop.lines()
    assert len(lines) == 3 and stop.exit_code == 1, lines
    assert lines[0].startswith("run r1 failed: CmaApiError: the CMA API request") and "HTTP 503" in lines[0]
    assert lines[1] == ("next: check that the museum API answers, then run the same command with --run-id r1: rows "
                        "in its checkpoint are not fetched or embedded again")
    error = out / "runs" / "r1" / "error.txt"
    assert lines[2].startswith(f"the full traceback: {error}") and "CmaApiError" in error.read_text()
    state = {s.run_id: s for s in list_runs(ObjectStore(), str(out))}["r1"]
    assert state.state == "failed" and state.to_dict()["cause"] == stop.cause


def test_ctrl_c_keeps_the_checkpoint_says_how_to_resume_and_the_resume_finishes(server, photos, tmp_path,
                                                                                  notop_weights):
    """A slow catalogue, interrupted once the checkpoint (written every second) holds rows: the run
    stops with what is safe, `imgsim runs` says interrupted, and the same run id resumes them."""
    release = threading.Event()

    def slow(name):
        def respond(h):
            if name.startswith("late"):
                release.wait(30)
            h.send(200, photos["dog"] if name.endswith("0") else photos["kite"], "image/jpeg")
        return respond

    rows = [{"id": f"fast{i}", "url": server.route(f"/fast{i}.jpg", slow(f"fast{i}"))} for i in range(6)]
    rows += [{"id": f"late{i}", "url": server.route(f"/late{i}.jpg", slow(f"late{i}"))} for i in range(2)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    checkpoint = out / "runs" / "r1" / "checkpoint"

    def interrupt_once_checkpointed():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (checkpoint.exists() and any(checkpoint.glob("*.parquet"))):
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as Ctrl-C reaches it
        release.set()  # the downloads in flight end: the run unwinds once they have

    threading.Thread(target=interrupt_once_checkpointed, daemon=True).start()
    args = ("--input", manifest, "--output", str(out), "--run-id", "r1", "--checkpoint-seconds", "1",
            "--max-batch-size", "2")
    with pytest.raises(RunInterrupted) as interrupted:
        launch_fake(notop_weights, *args)
    stop = interrupted.value
    assert stop.exit_code == 130 and stop.rows_safe >= 1 and stop.run_id == "r1"
    assert stop.lines()[0] == f"interrupted: {stop.rows_safe:,} embedded row{'s' if stop.rows_safe > 1 else ''} of " \
                              "run r1 are safe in its checkpoint"
    assert [s.state for s in list_runs(ObjectStore(), str(out))] == ["interrupted"]

    summary = launch_fake(notop_weights, *args)
    assert summary.accounted and summary.counts["embedded"] == 8 and summary.counts["resumed"] >= stop.rows_safe
    assert [s.state for s in list_runs(ObjectStore(), str(out))] == ["finished"]


def test_the_resume_command_repeats_the_arguments_with_the_run_id():
    assert resume_command(["run", "--input", "a b.csv", "--output", "o"], "r9") == \
        "imgsim run --input 'a b.csv' --output o --run-id r9"
    assert resume_command(["run", "--run-id", "old", "--input", "m.csv", "--run_id=x"], "r9") == \
        "imgsim run --input m.csv --run-id r9"


@pytest.mark.model
def test_ctrl_c_on_the_command_line_prints_two_lines_and_the_command_resumes(server, photos, notop_weights, tmp_path):
    """The real command with VGG16, interrupted by SIGINT: exit 130, two lines (no traceback), and
    the printed command, run as printed, resumes and finishes."""
    gate = threading.Event()

    def respond(name):
        def answer(h):
            if name.startswith("late"):
                gate.wait(60)
            h.send(200, photos["dog"] if name.endswith("0") else photos["kite"], "image/jpeg")
        return answer

    rows = [{"id": f"fast{i}", "url": server.route(f"/f{i}.jpg", respond(f"fast{i}"))} for i in range(4)]
    rows += [{"id": "late0", "url": server.route("/l0.jpg", respond("late0"))}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    argv = ["run", "--input", manifest, "--output", str(out), "--weights", notop_weights, "--layer", "pool",
            "--allow-private-addresses", "--checkpoint-seconds", "1", "--max-batch-size", "2", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "imgsim", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    checkpoints = out / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(checkpoints.glob("*/checkpoint/*.parquet")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 2, stderr
    assert "embedded rows" in lines[0] or "embedded row " in lines[0]
    assert lines[1].startswith("imgsim run: resume: imgsim run ") and "--run-id" in lines[1]
    gate.set()
    resumed = subprocess.run([sys.executable, "-m", "imgsim", *shlex.split(lines[1].split("resume: imgsim ", 1)[1])],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["counts"]["embedded"] == 5 and summary["counts"]["resumed"] >= 1
