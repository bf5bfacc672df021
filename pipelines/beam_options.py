"""Beam's own options: the flags `imgsim run` leaves to Beam, checked and completed.

imgsim's parser takes its own flags and leaves the rest (`--runner`,
`--project`, `--temp_location`, ...) to Beam. Beam would only warn about a
flag it does not know either, so it is refused here, by comparing what Beam
retains as unknown with what it knows (a runner named by its module path is
imported first, so that its own options are known). For Dataflow,
`--setup_file` is filled in from this checkout unless an SDK container image
with imgsim is named.

Where the workers run decides what a run may name: `shares_filesystem` says
whether they can read this machine's paths (the direct runners; a portable
runner whose SDK workers are loopback, or processes of an embedded job service;
a Dask cluster on this machine), `submits_and_returns` whether the launcher
returns once the job is submitted (Dataflow) instead of waiting for it.
"""
from __future__ import annotations

import importlib
import ipaddress
import os
from typing import Optional, Sequence
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import (PipelineOptions, PortableOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from imgsim.config.flags import ConfigError

LOCAL_RUNNERS = ("DirectRunner", "PrismRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")
PORTABLE_RUNNERS = ("PortableRunner", "FlinkRunner", "SparkRunner")
DATAFLOW = "DataflowRunner"
DASK = "DaskRunner"


def pipeline_options(beam_args: Sequence[str], command: str = "run") -> PipelineOptions:
    """PipelineOptions for the arguments imgsim left to Beam; ConfigError on a flag nobody knows."""
    args = list(beam_args)
    _import_runner(PipelineOptions(args).view_as(StandardOptions).runner)
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
    if runner_name(options) == DATAFLOW:
        _fill_setup_file(options)
    return options


def _import_runner(runner) -> None:
    """A runner named by its module path (apache_beam.runners.dask.dask_runner.DaskRunner): import its
    module now, so that its options are known, or say in one line what is missing."""
    if not isinstance(runner, str) or "." not in runner:
        return
    module = runner.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as e:
        hint = " (pip install 'imgsim[dask]')" if "dask" in module else ""
        raise ConfigError(f"--runner {runner}: cannot import {module} ({e}){hint}") from None

def _stray_words(args: list[str]) -> list[str]:
    """Bare words that are not the value of the flag before them (`--runner DataflowRunner` is fine)."""
    return [a for i, a in enumerate(args) if not a.startswith("-")
            and not (i > 0 and args[i - 1].startswith("-") and "=" not in args[i - 1])]


def runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return (name or "DirectRunner").split(".")[-1]


def is_local(options: PipelineOptions) -> bool:
    """The runner executes in this process (progress lines can be counted here)."""
    return runner_name(options) in LOCAL_RUNNERS


def shares_filesystem(options: PipelineOptions) -> bool:
    """The workers can read and write this machine's paths."""
    name = runner_name(options)
    if name in LOCAL_RUNNERS:
        return True
    if name in PORTABLE_RUNNERS:
        portable = options.view_as(PortableOptions)
        environment = (portable.environment_type or "DOCKER").upper()
        return environment == "LOOPBACK" or (environment == "PROCESS" and portable.job_endpoint == "embed")
    if name == DASK:
        address = options.get_all_options().get("address")  # Beam's DaskOptions: --dask_client_address
        return address is not None and _is_loopback(address)
    return False


def submits_and_returns(options: PipelineOptions) -> bool:
    """The launcher returns once the job is submitted (Dataflow: its console follows the job)."""
    return runner_name(options) == DATAFLOW


def _is_loopback(address: str) -> bool:
    host = urlsplit(address if "://" in address else "tcp://" + address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
