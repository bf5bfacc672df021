"""Beam's own options: the flags `imgsim run` leaves to Beam, checked and completed.

imgsim's parser takes its own flags and leaves the rest (`--runner`,
`--project`, `--temp_location`, ...) to Beam. Beam would only warn about a
flag it does not know either, so it is refused here, by comparing what Beam
retains as unknown with what it knows. For Dataflow, `--setup_file` is filled
in from this checkout unless an SDK container image with imgsim is named.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, WorkerOptions

from imgsim.config.flags import ConfigError

LOCAL_RUNNERS = ("DirectRunner", "PrismRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")


def pipeline_options(beam_args: Sequence[str], command: str = "run") -> PipelineOptions:
    """PipelineOptions for the arguments imgsim left to Beam; ConfigError on a flag nobody knows."""
    args = list(beam_args)
    known = set(PipelineOptions([]).get_all_options())
    unknown = sorted(set(PipelineOptions(args).get_all_options(retain_unknown_options=True)) - known)
    if unknown:
        spelled = [a.split("=", 1)[0] for a in args
                   if a.startswith("-") and a.lstrip("-").split("=", 1)[0].replace("-", "_") in unknown]
        raise ConfigError(f"unknown option(s): {' '.join(spelled or unknown)} (see imgsim {command} --help)")
    stray = _stray_words(args)
    if stray:
        raise ConfigError(f"unexpected argument(s): {' '.join(stray)} (see imgsim {command} --help)")
    options = PipelineOptions(args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"  # said, so Beam does not log that it chose it
    if not is_local(options):
        _fill_setup_file(options)
    return options


def _stray_words(args: list[str]) -> list[str]:
    """Bare words that are not the value of the flag before them (`--runner DataflowRunner` is fine)."""
    return [a for i, a in enumerate(args) if not a.startswith("-")
            and not (i > 0 and args[i - 1].startswith("-") and "=" not in args[i - 1])]


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return name is None or name.split(".")[-1] in LOCAL_RUNNERS


def _fill_setup_file(options: PipelineOptions) -> None:
    setup = options.view_as(SetupOptions)
    if setup.setup_file or options.view_as(WorkerOptions).sdk_container_image:
        return
    setup.setup_file = find_setup_file()
    if not setup.setup_file:
        raise ConfigError("DataflowRunner needs --setup_file (imgsim's setup.py) or "
                          "--sdk_container_image with imgsim installed")


def find_setup_file() -> Optional[str]:
    """imgsim's setup.py when running from a source checkout (the Dataflow workers' install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidate = os.path.join(os.path.dirname(here), "setup.py")
    return candidate if os.path.isfile(candidate) else None
