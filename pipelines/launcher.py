"""`imgsim run`: check the configuration, fill in Dataflow's defaults, launch, report.

Local runs wait and print the summary; Dataflow runs print the job and
return (add --wait to follow the job to its end).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, WorkerOptions

from imgsim.pipelines.embed_pipeline import is_local, run_with
from imgsim.pipelines.options import ConfigError, ImgsimOptions, RunConfig, unknown_flags
from imgsim.storage import ObjectStore

_LOG = logging.getLogger("imgsim")


def find_setup_file() -> Optional[str]:
    """imgsim's setup.py when running from a source checkout (the Dataflow workers' install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidate = os.path.join(os.path.dirname(here), "setup.py")
    return candidate if os.path.isfile(candidate) else None


def normalise_flags(argv: list[str]) -> list[str]:
    """Accept imgsim's flags as Flex Templates pass them.

    Template parameters arrive as `--name=value`, with underscores (Beam's own
    spelling): `--cma_api_url=X` means `--cma-api-url X`, and an on/off switch
    arrives as `--respect_robots=true` or `=false`. Beam's options are left as they are."""
    dashed, switches = _imgsim_flags()
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name.startswith("--") and "_" in name and name.replace("_", "-") in dashed:
            name = name.replace("_", "-")
            arg = name + sep + value
        if sep and name in switches:
            answer = value.strip().lower()
            if answer in ("true", "1", "yes"):
                arg = name
            elif answer in ("false", "0", "no", ""):
                continue
            else:
                raise ConfigError(f"{name} takes true or false, not {value!r}")
        out.append(arg)
    return out


def imgsim_flags() -> set[str]:
    """Every option string imgsim itself declares (for `imgsim run`)."""
    return _imgsim_flags()[0]


def _imgsim_flags() -> tuple[set[str], set[str]]:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    ImgsimOptions._add_argparse_args(parser)
    flags = {s for action in parser._actions for s in action.option_strings}
    switches = {s for action in parser._actions if action.nargs == 0 for s in action.option_strings}
    return flags, switches


def prepare_options(argv: list[str]) -> PipelineOptions:
    argv = normalise_flags(argv)
    unknown = unknown_flags(argv)
    if unknown:
        raise ConfigError(f"unknown option(s): {' '.join(unknown)} (see imgsim run --help)")
    options = PipelineOptions(argv)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if str(runner).endswith("DataflowRunner"):
        setup = options.view_as(SetupOptions)
        has_image = bool(options.view_as(WorkerOptions).sdk_container_image)
        if not setup.setup_file and not has_image:
            setup.setup_file = find_setup_file()
            if not setup.setup_file:
                raise ConfigError("DataflowRunner needs --setup_file (imgsim's setup.py) or "
                                  "--sdk_container_image with imgsim installed")
    return options


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options = prepare_options(argv)
        config = RunConfig.from_options(options, remote_workers=not is_local(options))
    except ConfigError as e:
        print(f"imgsim run: error: {e}", file=sys.stderr)
        return 2
    _LOG.info("run %s: input %s -> %s", config.layout.run_id, json.dumps(config.input.describe()),
              config.layout.run_dir)
    result, config = run_with(options, config)
    if not is_local(options) and not options.view_as(ImgsimOptions).wait:
        try:
            job = result.job_id()
        except AttributeError:  # Beam only wrote the job file (a Flex Template launch): the service submits it
            job = None
        print(json.dumps({"run_id": config.layout.run_id, "job_id": job, "run_dir": config.layout.run_dir}))
        return 0
    state = result.wait_until_finish()
    store = ObjectStore()
    if not store.exists(config.layout.summary_path):
        print(f"imgsim run: the job ended ({state}) without writing {config.layout.summary_path}",
              file=sys.stderr)
        return 1
    summary = json.loads(store.read_bytes(config.layout.summary_path))
    report = {k: summary[k] for k in ("run_id", "counts", "accounted", "failures_by_reason",
                                      "wall_seconds", "images_per_second")}
    report["summary"] = config.layout.summary_path
    if config.index is not None:
        report["index"] = summary.get("index")
    print(json.dumps(report))
    return exit_code(summary, index_expected=config.index is not None)


def exit_code(summary: dict, index_expected: bool) -> int:
    """0: every row accounted for and (if asked) the index published as LATEST; 1 otherwise."""
    problems = []
    if not summary["accounted"]:
        problems.append("the run did not account for every input row")
    index = summary.get("index")
    if index_expected:
        if not index or not index.get("published"):
            problems.append("no index was published: " + ((index or {}).get("reason") or "unknown reason"))
        elif not index.get("latest_updated"):
            problems.append(index.get("latest", "LATEST was not updated"))
    for problem in problems:
        print(f"imgsim run: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":  # the Flex Template launcher runs this file
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
