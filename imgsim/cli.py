"""The `imgsim` command: `run` (the Beam pipeline), `index` and `query` (no Beam needed)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

USAGE = """usage: imgsim COMMAND [options]

commands:
  run     embed a collection and publish its index, with the Beam pipeline (imgsim run --help)
  index   build and publish an index from existing embeddings, without re-running inference
  query   ask a published index for the items most like an id or an image
"""


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        if "-h" in rest or "--help" in rest:
            return _run_help()
        try:
            from imgsim.pipelines import launcher
        except ImportError as e:
            print(f"imgsim run needs the pipeline extra: pip install 'imgsim[pipeline]' ({e})", file=sys.stderr)
            return 2
        return launcher.main(rest)
    if command in ("index", "query"):
        from imgsim import commands

        return commands.index_main(rest) if command == "index" else commands.query_main(rest)
    print(f"imgsim: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


def _run_help() -> int:
    import argparse

    from imgsim.pipelines.options import ImgsimOptions

    parser = argparse.ArgumentParser(
        prog="imgsim run", description="Embed every image of a collection with VGG16.",
        epilog="Every Apache Beam pipeline option passes through: --runner DataflowRunner --project P "
               "--region R --temp_location gs://... (setup_file is filled in for Dataflow). "
               "--wait follows a Dataflow job to its end.")
    ImgsimOptions._add_argparse_args(parser)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
