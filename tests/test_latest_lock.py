"""The lock of LATEST's local compare-and-swap: held by a live writer it refuses, naming the holder;
left by a killed writer it blocks nobody. Real processes, real signals, real publishes."""
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from imgsim.index.latest import read_latest
from imgsim.lockfile import LockBusy, exclusive_lock
from imgsim.storage import ObjectStore
from test_index import clustered, embeddings_table, publish_table

HOLDER = os.path.join(os.path.dirname(__file__), "hold_latest_lock.py")


def start_holder(out):
    """A process stopped inside LATEST's critical section, holding the lock."""
    holder = subprocess.Popen([sys.executable, HOLDER, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    ready, _, _ = select.select([holder.stdout], [], [], 60)
    if not ready or holder.stdout.readline().strip() != "holding":
        holder.kill()
        pytest.fail(f"the holder did not take the lock: {holder.stderr.read()[-2000:]}")
    return holder


def test_a_publisher_killed_holding_the_lock_does_not_block_the_next_one(tmp_path, caplog):
    out = str(tmp_path / "out")
    publish_table(embeddings_table(clustered(40, seed=1)), out, "r1")
    holder = start_holder(out)
    try:
        # while it lives, a concurrent publish is refused and told who holds the lock
        report = publish_table(embeddings_table(clustered(40, seed=2)), out, "r2")
        assert report["published"] and not report["latest_updated"]
        assert f"process {holder.pid} on {socket.gethostname()} since " in report["latest"]
        assert "another publisher was replacing LATEST" in report["latest"]
        assert read_latest(ObjectStore(), out).run_id == "r1"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    assert os.path.exists(os.path.join(out, "LATEST.lock"))  # it died inside: its lock file stays

    with caplog.at_level(logging.WARNING):
        report = publish_table(embeddings_table(clustered(40, seed=3)), out, "r3")
    assert report["latest_updated"] and read_latest(ObjectStore(), out).run_id == "r3"
    assert f"left by process {holder.pid} on {socket.gethostname()}" in caplog.text and "died" in caplog.text
    assert not os.path.exists(os.path.join(out, "LATEST.lock"))


def test_a_busy_lock_names_its_holder_and_a_released_one_is_free(tmp_path):
    path = str(tmp_path / "x.lock")
    with exclusive_lock(path) as dead:
        assert dead is None
        with pytest.raises(LockBusy, match=f"held by process {os.getpid()} on "):
            with exclusive_lock(path):
                pass
    assert not os.path.exists(path)
    with exclusive_lock(path) as dead:
        assert dead is None  # released cleanly: nobody died holding it


def test_only_one_writer_at_a_time_holds_the_lock(tmp_path):
    """Many threads taking and releasing one lock (each its own open file, as processes have):
    never two inside at once, although the file is removed and created again all the time."""
    path = str(tmp_path / "busy.lock")
    inside, overlaps, entered = [0], [], [0]
    guard = threading.Lock()

    def worker():
        taken = 0
        while taken < 30:  # a count, not a time: a loaded machine only makes it slower
            try:
                with exclusive_lock(path):
                    with guard:
                        inside[0] += 1
                        entered[0] += 1
                        if inside[0] > 1:
                            overlaps.append(inside[0])
                    time.sleep(0.0001)
                    with guard:
                        inside[0] -= 1
                taken += 1
            except LockBusy:
                pass

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert entered[0] == 6 * 30 and overlaps == []
