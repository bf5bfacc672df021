"""The one parser: `imgsim COMMAND [flags]`, built from the options classes.

Each command's flags come from its options class (imgsim.config.options);
`imgsim run` passes every flag it does not know on to Beam (`--runner`,
`--project`, ...), as Beam's own examples do with parse_known_args; Beam then
refuses what it does not know either (pipelines/beam_options.py). The CLI, the
Flex Template's main file and the Python API all end here or in the options
classes, so a flag means the same everywhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from imgsim import __version__
from imgsim.config.flags import ConfigError, FlagParser, Flags, add_flags, flag, from_namespace
from imgsim.config.options import (EvaluateOptions, ExploreOptions, ExportOptions, IndexCommandOptions,
                                   PlanOptions, QueryOptions, RollbackOptions, RunOptions, RunsOptions,
                                   ServeOptions, VerifyOptions)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclasses.dataclass(frozen=True)
class CommonFlags(Flags):
    """Flags every command takes."""

    GROUP = "logging"

    log_level: str = flag("INFO", "how much to log", choices=LOG_LEVELS)
    quiet: bool = flag(False, "log warnings and errors only (the same as --log-level WARNING)", short="-q")

    @property
    def effective_log_level(self) -> str:
        return "WARNING" if self.quiet else self.log_level


@dataclasses.dataclass(frozen=True)
class TemplateMetadataOptions(Flags):
    """`imgsim template-metadata`: the Flex Template's metadata.json, from the flags of `imgsim run`."""

    output: Optional[str] = flag(None, "write it to this file", default_text="standard output")


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    options: type
    summary: str
    description: str = ""
    epilog: str = ""
    passes_beam_options: bool = False
    usage: str = ""


COMMANDS = (
    Command("run", RunOptions, "embed a collection with VGG16 and publish its index (the Beam pipeline)",
            description="Embed every image of a collection with VGG16, write embeddings and failures as "
            "Parquet, then build, check and publish a ScaNN index.",
            epilog="Every Apache Beam pipeline option passes through, e.g. --runner DataflowRunner "
            "--project P --region R --temp_location gs://... (--setup_file is filled in for Dataflow).",
            passes_beam_options=True,
            usage="imgsim run --input INPUT --output OUTPUT [options] [Beam pipeline options]"),
    Command("index", IndexCommandOptions, "build and publish an index from existing embeddings, without inference "
            "(a Beam pipeline)",
            description="Build, check and publish an index from existing embeddings files, as a Beam pipeline: "
            "one worker builds a collection within --index-memory-mb, larger ones are sharded and built by the "
            "workers in parallel.",
            epilog="Every Apache Beam pipeline option passes through, e.g. --runner DataflowRunner "
            "--project P --region R --temp_location gs://... (--setup_file is filled in for Dataflow).",
            passes_beam_options=True,
            usage="imgsim index --embeddings GLOB --output OUTPUT [options] [Beam pipeline options]"),
    Command("query", QueryOptions, "ask a published index for the items most (or least) like an id, several ids or an image, within a "
            "filter, or for its outliers"),
    Command("export", ExportOptions, "write a published index's items in the import format of a managed vector "
            "search service (Vertex AI Vector Search)"),
    Command("evaluate", EvaluateOptions, "measure how good the neighbours are: labelled retrieval, near duplicates"),
    Command("explore", ExploreOptions, "write the explorer: a static site to browse an index's images, their "
            "neighbours, near-duplicate groups and a map"),
    Command("serve", ServeOptions, "serve an index over HTTP: similar items, items, search by image, and the explorer"),
    Command("plan", PlanOptions, "count an input and estimate a run's wall time, vCPU-hours and cost on "
            "Dataflow for fp32, bf16, int8 and a GPU, before launching it"),
    Command("runs", RunsOptions, "list the runs under an output root: finished, published, LATEST"),
    Command("rollback", RollbackOptions, "point LATEST at an earlier published run (compare-and-swap)"),
    Command("verify", VerifyOptions, "check a published index: checksums, loading, self-query"),
    Command("template-metadata", TemplateMetadataOptions,
            "print the Dataflow Flex Template metadata.json made from the flags of `imgsim run`"),
)


@dataclasses.dataclass(frozen=True)
class Parsed:
    command: str
    options: Any  # the command's options class
    common: CommonFlags
    beam_args: tuple[str, ...] = ()  # `imgsim run` only: flags left for Beam
    argv: tuple[str, ...] = ()  # the command line as given (what a resume repeats)


def build_parser() -> FlagParser:
    parser = FlagParser(prog="imgsim", description="Find similar images in large collections: VGG16 "
                        "embeddings, an Apache Beam pipeline, a ScaNN index.")
    parser.add_argument("--version", action="version", version=f"imgsim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=FlagParser)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.summary,
                                  usage=command.usage or f"imgsim {command.name} [options]",
                                  description=command.description or command.summary[0].upper()
                                  + command.summary[1:] + ".", epilog=command.epilog or None)
        add_flags(sub, command.options)
        add_flags(sub, CommonFlags)
    return parser


def parse(argv: list[str]) -> Parsed:
    """Parse a whole command line; ConfigError (one line) for anything wrong with it."""
    namespace, extra = build_parser().parse_known_args(argv)
    command = next(c for c in COMMANDS if c.name == namespace.command)
    if extra and not command.passes_beam_options:
        raise ConfigError(f"unknown option(s): {' '.join(extra)} (see imgsim {command.name} --help)")
    return Parsed(command.name, from_namespace(command.options, namespace),
                  from_namespace(CommonFlags, namespace), tuple(extra), tuple(argv))


def parse_index_args(argv: list[str]) -> tuple[IndexCommandOptions, list[str]]:
    """`imgsim index`'s flags: (IndexCommandOptions, the arguments left for Beam)."""
    parsed = parse(["index", *argv])
    return parsed.options, list(parsed.beam_args)


def parse_run_args(argv: list[str]) -> tuple[RunOptions, list[str]]:
    """`imgsim run`'s flags: (RunOptions, the arguments left for Beam)."""
    parsed = parse(["run", *argv])
    return parsed.options, list(parsed.beam_args)

