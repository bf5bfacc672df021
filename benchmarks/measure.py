"""Run one command and report its wall time and peak memory (maximum resident set size).

    python -m benchmarks.measure -- imgsim run ...

This wrapper has exactly one child, so RUSAGE_CHILDREN's maxrss is that command's peak.
"""
import json
import resource
import subprocess
import sys
import time


def main() -> int:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"returncode": proc.returncode, "wall_seconds": round(wall, 3),
                      "peak_rss_mb": round(peak_kb / 1024, 1), "stdout": proc.stdout[-4000:],
                      "stderr": proc.stderr[-4000:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
