"""Test helper: a writer that stops inside the critical section of LATEST's local compare-and-swap.

    python tests/hold_latest_lock.py OUT

It replaces OUT/LATEST with its own content by the same compare-and-swap a publish uses, but
its rename (the last step under the lock) never returns: it prints "holding" and sleeps, holding
the lock until it is killed, like a publisher killed at the worst moment.
"""
import os
import sys
import time

from imgsim.storage import ObjectStore


def stop_inside(src, dst):
    print("holding", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    path = os.path.join(sys.argv[1], "LATEST")
    store = ObjectStore()
    data, generation = store.read_with_generation(path)
    os.replace = stop_inside  # only the compare-and-swap renames, and only while holding the lock
    store.write_bytes(path, data, if_generation_match=generation)
