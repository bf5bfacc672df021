"""The `imgsim` command: parse (imgsim.config), call the Python API, print. Nothing else lives here.

Exit codes: 0 success; 1 the work ran but did not fully succeed (a run that
did not publish, a query that found nothing to load, a failed verification);
2 bad configuration, reported in one line before any work starts.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from typing import Optional

from imgsim.config.flags import ConfigError
from imgsim.config.parser import parse

_LOG = logging.getLogger("imgsim")


def console() -> None:
    """The installed command: main(), then exit. An interrupted run exits at once: its checkpoint is
    safe, and waiting for downloads still in flight (up to their deadline) would only hold the shell."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    command = next((a for a in argv if not a.startswith("-")), "imgsim")
    try:
        parsed = parse(argv)
    except ConfigError as e:
        return _error(command, e)
    except SystemExit as e:  # --help and --version print and stop
        return int(e.code or 0)
    _configure_logging(parsed.common.effective_log_level)
    handler = globals()["_" + parsed.command.replace("-", "_")]
    try:
        return handler(parsed)
    except ConfigError as e:
        return _error(parsed.command, e)


def _error(command: str, error: Exception) -> int:
    print(f"imgsim {command}: error: {error}" if command != "imgsim" else f"imgsim: error: {error}",
          file=sys.stderr)
    return 2


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("apache_beam").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_known_noise)


# Warnings that say nothing to an imgsim user, by the start of their message. Beam's RunInference
# imports `resource` together with its optional torch model manager, so without torch it believes
# the platform has no `resource` module and says so (to the root logger) at every model load.
KNOWN_NOISE = ("Resource module is not available for current platform",)


def _known_noise(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for KNOWN_NOISE below --log-level DEBUG."""
    if record.levelno >= logging.ERROR or logging.getLogger().level <= logging.DEBUG:
        return True
    return not str(record.msg).startswith(KNOWN_NOISE)


def _print(document) -> None:
    print(json.dumps(document, default=str, ensure_ascii=False))


def _run(parsed) -> int:
    from imgsim.api import run_options
    from imgsim.runs.stops import RunInterrupted, RunStopped
    from imgsim.runs.summary import RunSummary

    try:
        outcome = run_options(parsed.options, parsed.beam_args)
    except RunStopped as e:
        lines = e.lines()
        if isinstance(e, RunInterrupted):
            lines[1] = f"resume: {resume_command(parsed.argv, e.run_id)}"
        for line in lines:
            print(f"imgsim run: {line}", file=sys.stderr)
        return e.exit_code
    _print(outcome.report())
    if not isinstance(outcome, RunSummary):
        return 0
    for problem in outcome.problems():
        print(f"imgsim run: {problem}", file=sys.stderr)
    return 1 if outcome.problems() else 0


def _index(parsed) -> int:
    from imgsim.api import index_embeddings
    from imgsim.index.artifact import ArtifactError
    from imgsim.index.build import IndexInputError, RecallTooLow

    try:
        outcome = index_embeddings(parsed.options, parsed.beam_args)
    except (ArtifactError, IndexInputError) as e:
        raise ConfigError(str(e)) from None
    except RecallTooLow as e:
        print(f"imgsim index: {e}", file=sys.stderr)
        _print({"published": False, **e.report})
        return 1
    if not isinstance(outcome, dict):  # a job submitted to Dataflow
        _print(outcome.report())
        return 0
    _print(outcome)
    if not outcome.get("published"):
        print(f"imgsim index: {outcome.get('reason')}", file=sys.stderr)
        return 1
    return 0 if outcome["latest_updated"] else 1


def _query(parsed) -> int:
    from imgsim.index.artifact import ArtifactError
    from imgsim.embed.reproduce import ModelMismatch
    from imgsim.index.consumer import ImageIndex

    o = parsed.options
    where = o.where()
    asked = dict(filters=where.values, ranges=where.ranges)
    try:
        index = ImageIndex.open(o.index, run_id=o.run_id, cache_dir=o.cache_dir)
        if o.outliers:
            matches = index.outliers(o.k, **asked)
        elif o.image is not None:
            matches = index.search_image(o.image, o.k, weights=o.weights, backend=o.backend, order=o.order, **asked)
        elif len(o.id) == 1 and not o.not_id:
            matches = index.similar(o.id[0], o.k, include_self=o.include_self, order=o.order, **asked)
        else:
            matches = index.recommend(o.id, o.not_id, o.k, **asked)
    except (ArtifactError, ModelMismatch, KeyError, ValueError, FileNotFoundError) as e:
        raise ConfigError(e.args[0] if isinstance(e, KeyError) and e.args else e) from None
    for match in matches:
        _print(match.to_dict())
    return 0


def _export(parsed) -> int:
    from imgsim.api import export_options
    from imgsim.index.artifact import ArtifactError

    try:
        result = export_options(parsed.options)
    except ArtifactError as e:
        raise ConfigError(str(e)) from None
    _print(result)
    return 0


def _evaluate(parsed) -> int:
    from imgsim.api import evaluate_options
    from imgsim.embed.reproduce import ModelMismatch
    from imgsim.index.artifact import ArtifactError

    try:
        result = evaluate_options(parsed.options)
    except (ArtifactError, ModelMismatch, ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    _print(rounded(result))
    return 0


def resume_command(argv, run_id: str) -> str:
    """The command line that resumes a run: the same arguments, with --run-id run_id."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--run-id", "--run_id"):
            skip = True
            continue
        if arg.startswith(("--run-id=", "--run_id=")):
            continue
        args.append(arg)
    return shlex.join(["imgsim", *args, "--run-id", run_id])


def rounded(document, digits: int = 4):
    """document with every float rounded to `digits` places: metrics, not float noise."""
    if isinstance(document, float):
        return round(document, digits)
    if isinstance(document, dict):
        return {key: rounded(value, digits) for key, value in document.items()}
    if isinstance(document, (list, tuple)):
        return [rounded(value, digits) for value in document]
    return document


def _explore(parsed) -> int:
    from imgsim.api import explore_options

    _print(explore_options(parsed.options))
    return 0


def _serve(parsed) -> int:
    from imgsim.api import serve_options

    def ready(url: str) -> None:
        print(f"imgsim serve: {url} (the explorer; the API under {url}api/)", flush=True)

    try:
        serve_options(parsed.options, ready)
    except KeyboardInterrupt:
        pass
    return 0


def _runs(parsed) -> int:
    from imgsim.index.artifact import ArtifactError
    from imgsim.index.history import list_runs, table
    from imgsim.storage import ObjectStore

    try:
        states = list_runs(ObjectStore(), parsed.options.output)
    except ArtifactError as e:
        raise ConfigError(str(e)) from None
    if parsed.options.json:
        for state in states:
            _print(state.to_dict())
    else:
        print(table(states) if states else f"no runs under {parsed.options.output}")
    return 0


def _rollback(parsed) -> int:
    from imgsim.index.artifact import ArtifactError
    from imgsim.index.publish import rollback
    from imgsim.storage import ObjectStore, PreconditionFailed

    o = parsed.options
    try:
        latest = rollback(ObjectStore(), o.output, o.run_id)
    except ArtifactError as e:
        raise ConfigError(str(e)) from None
    except PreconditionFailed as e:
        print(f"imgsim rollback: LATEST changed meanwhile and was left as it is ({e}); try again", file=sys.stderr)
        return 1
    _print({"latest": latest.run_id, "index": latest.index, "manifest_sha256": latest.manifest_sha256})
    return 0


def _plan(parsed) -> int:
    from imgsim.api import plan_options

    plan = plan_options(parsed.options)
    if parsed.options.json:
        _print(plan)
        return 0
    print(plan_table(plan))
    return 0


def plan_table(plan: dict) -> str:
    count, measured, prices = plan["count"], plan["measured"], plan["prices"]
    lines = [f"{count['images']:,} images ({count['how']})"
             + (f"; {count['refused']:,} {'row' if count['refused'] == 1 else 'rows'} the run would refuse"
                if count["refused"] else ""),
             f"{'precision':<10} {'machine':<16} {'workers':>7} {'img/s/worker':>12} {'wall':>9} {'vCPU-h':>9} "
             f"{'cost':>10}  needs"]
    for e in plan["estimates"]:
        lines.append(f"{e['precision']:<10} {e['machine_type']:<16} {e['workers']:>7} "
                     f"{e['images_per_second_per_worker']:>12.1f} {_hours(e['wall_hours']):>9} "
                     f"{e['vcpu_hours']:>9,.1f} {e['cost']:>10,.2f}  {e['needs']}")
    lines.append(f"Rates: imgsim's end-to-end measurements ({measured['date']}, {measured['machine']}, "
                 f"{measured['vcpus']} vCPUs), scaled by each machine's vCPUs; prices: {prices['source']} "
                 f"({prices['currency']}, as of {prices['as_of']}). " + " ".join(
                     f"{e['precision']}: {e['note']}." for e in plan["estimates"] if e["note"]))
    return "\n".join(lines)


def _hours(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _verify(parsed) -> int:
    from imgsim.index.artifact import ArtifactError
    from imgsim.index.consumer import locate_index
    from imgsim.index.publish import verify
    from imgsim.storage import ObjectStore

    o = parsed.options
    store = ObjectStore()
    try:
        found = locate_index(store, o.index, o.run_id)
        index_dir = found.index_dir
        manifest = verify(store, index_dir, found.manifest_sha256)
    except ArtifactError as e:
        print(f"imgsim verify: {e}", file=sys.stderr)
        _print({"verified": False, "reason": str(e)})
        return 1
    _print({"verified": True, "index": index_dir, "run_id": manifest.run_id, "count": manifest.count,
            "files": len(manifest.all_files()), "shards": len(manifest.shards) or None,
            "recall": manifest.section("recall")})
    return 0


def _template_metadata(parsed) -> int:
    from imgsim.config.template import metadata_json

    text = metadata_json()
    if parsed.options.output:
        with open(parsed.options.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
