"""Flags declared once, as typed dataclass fields; argparse parsers and template metadata made from them.

Every option of every command is a field of a frozen dataclass (imgsim.config.options),
declared with `flag(default, help, ...)`. From those declarations come:
- the argparse parser of each command (`add_flags`), with each dashed flag's
  underscore spelling declared as a hidden alias (`--cma-api-url` and
  `--cma_api_url`: Dataflow Flex Templates pass parameters with underscores),
  and switches that also take `=true` / `=false` (as templates pass booleans);
- the typed options the code uses (`from_namespace`), checked generically
  here (type, choices, ranges, required) and across fields by each class;
- the Flex Template's infra/metadata.json (`template_parameter`).
So the CLI, the Flex Template and the Python API cannot drift apart: there is
one declaration per option, and no parsing anywhere else.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, ClassVar, Optional

FLAG = "imgsim.flag"


class ConfigError(ValueError):
    """Bad configuration, found before any work starts; its message is one line saying what to fix."""


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    help: str
    label: str = ""  # Flex Template label (default: from the name)
    choices: tuple = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    positive: bool = False  # strictly greater than zero
    required: bool = False
    short: Optional[str] = None  # e.g. "-k"
    metavar: Optional[str] = None
    default_text: Optional[str] = None  # how a None default reads in help, e.g. "all"
    template: bool = True  # offered as a Flex Template parameter
    template_excluded: str = ""  # why not, when template is False
    template_help: Optional[str] = None  # the template's wording, where it differs (gs:// only, ...)
    template_regex: Optional[str] = None  # overrides the regex derived from type and range


def flag(default: Any, help: str, **spec) -> Any:
    """A dataclass field that is also a command-line flag (see FlagSpec for the options)."""
    return dataclasses.field(default=default, metadata={FLAG: FlagSpec(help=help, **spec)})


def dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Flags:
    """Base of every options class: fields declared with flag(), checked on construction.

    GROUP titles the fields a class declares itself in --help."""

    GROUP: ClassVar[str] = ""

    def __post_init__(self):
        for declared in declared_flags(type(self)):
            value = getattr(self, declared.name)
            if declared.repeated:
                if isinstance(value, str) or not isinstance(value, (tuple, list)):
                    raise ConfigError(f"{dashed(declared.name)} takes a list of values, not {value!r}")
                object.__setattr__(self, declared.name, tuple(value))
                for one in value:
                    check_value(declared.name, one, declared.spec, declared.kind)
                continue
            check_value(declared.name, value, declared.spec, declared.kind)


@dataclasses.dataclass(frozen=True)
class DeclaredFlag:
    field: dataclasses.Field
    spec: FlagSpec
    kind: type  # bool, int, float or str (of each value, for a repeated flag)
    group: str
    repeated: bool = False  # tuple[str, ...]: the flag may be given several times

    @property
    def name(self) -> str:
        return self.field.name


def declared_flags(cls: type) -> list[DeclaredFlag]:
    """The flags of an options class, in declaration order, with their type and --help group."""
    hints = typing.get_type_hints(cls)
    groups = {}
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("__annotations__", {}):
            groups.setdefault(name, getattr(klass, "GROUP", "") or "")
    out = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(FLAG)
        if spec is not None:
            hint = hints[field.name]
            repeated = typing.get_origin(hint) is tuple
            kind = _base_type(typing.get_args(hint)[0] if repeated else hint)
            out.append(DeclaredFlag(field, spec, kind, groups.get(field.name, ""), repeated))
    return out


def _base_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    if base not in (bool, int, float, str):
        raise TypeError(f"flags are bool, int, float or str, not {hint}")
    return base


def check_value(name: str, value, spec: FlagSpec, kind: type) -> None:
    """ConfigError with the flag's own name when the value is missing, of the wrong type or out of range."""
    flag_name = dashed(name)
    if value is None or (kind is str and spec.required and not value):
        if spec.required:
            raise ConfigError(f"{flag_name} is required: {spec.help}")
        return
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{flag_name} takes a {kind.__name__}, not {value!r}")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"unknown {name.replace('_', ' ')} {value!r} ({flag_name}): choose one of "
                          f"{', '.join(map(str, spec.choices))}")
    if spec.positive and value <= 0:
        raise ConfigError(f"{flag_name} must be positive")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{flag_name} must be at least {_number(spec.minimum)}")
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(f"{flag_name} must be at most {_number(spec.maximum)}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def parse_bool(text: str) -> bool:
    answer = text.strip().lower()
    if answer in ("true", "1", "yes"):
        return True
    if answer in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"takes true or false, not {text!r}")


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of printing usage and exiting, so every
    entry point reports bad flags the same way: one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # Beam's flags pass through: no prefix guessing
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise ConfigError(message)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add cls's flags to parser, in --help groups, each with its underscore alias."""
    groups: dict[str, Any] = {}
    for declared in declared_flags(cls):
        target = parser
        if declared.group:
            if declared.group not in groups:
                groups[declared.group] = parser.add_argument_group(declared.group)
            target = groups[declared.group]
        _add_flag(target, declared)


def _add_flag(target, declared: DeclaredFlag) -> None:
    name, spec, kind, default = declared.name, declared.spec, declared.kind, declared.field.default
    strings = ([spec.short] if spec.short else []) + [dashed(name)]
    help_text = (spec.help + _default_note(default, spec, kind)).replace("%", "%%")  # argparse formats help
    if declared.repeated:
        common = dict(dest=name, type=kind, action="append")
        target.add_argument(*strings, default=None, metavar=spec.metavar or name.upper(), help=help_text, **common)
    elif kind is bool:
        common = dict(dest=name, type=parse_bool, nargs="?", const=True)
        target.add_argument(*strings, default=default, metavar="true|false", help=help_text, **common)
        if default is True:
            target.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false",
                                default=argparse.SUPPRESS, help=f"the same as {dashed(name)}=false")
    else:
        common = dict(dest=name, type=kind)  # choices are checked with the other values, in one place
        metavar = spec.metavar or ("{" + ",".join(spec.choices) + "}" if spec.choices else name.upper())
        target.add_argument(*strings, default=default, metavar=metavar, help=help_text, **common)
    if "_" in name:  # the underscore spelling of Flex Template parameters: a declared alias
        target.add_argument("--" + name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **common)


def _default_note(default, spec: FlagSpec, kind: type) -> str:
    if spec.required or kind is bool or default == ():
        return ""
    if default is None:
        return f" (default: {spec.default_text})" if spec.default_text else ""
    return f" (default: {default})"


def from_namespace(cls: type, namespace: argparse.Namespace, **extra):
    """The options object for a parsed namespace (its flags' values), plus extra fields."""
    values = {d.name: getattr(namespace, d.name) for d in declared_flags(cls) if hasattr(namespace, d.name)}
    for d in declared_flags(cls):
        if d.repeated and values.get(d.name) is None:
            values[d.name] = ()
    return cls(**values, **extra)


# --- Flex Template metadata ------------------------------------------------------------------

def template_parameter(declared: DeclaredFlag) -> dict:
    """One entry of a Flex Template's metadata.json `parameters`."""
    spec, kind, default = declared.spec, declared.kind, declared.field.default
    text = spec.template_help or spec.help
    text = text[0].upper() + text[1:]
    if kind is bool:
        text += f". true or false (default {str(default).lower()})."
    elif spec.required:
        text += "."
    elif default is None:
        text += f" (default: {spec.default_text})." if spec.default_text else "."
    else:
        text += f" (default {default})."
    parameter = {"name": declared.name, "label": spec.label or declared.name.replace("_", " ").capitalize(),
                 "helpText": text}
    if not spec.required:
        parameter["isOptional"] = True
    regex = spec.template_regex or _regex(spec, kind)
    if regex:
        parameter["regexes"] = [regex]
    return parameter


def _regex(spec: FlagSpec, kind: type) -> Optional[str]:
    if kind is bool:
        return "^(true|false)$"
    if spec.choices:
        return "^(" + "|".join(spec.choices) + ")$"
    if kind is int:
        return "^[1-9][0-9]*$" if (spec.minimum or 0) >= 1 else "^[0-9]+$"
    if kind is float:
        if spec.maximum == 1 and spec.minimum is not None and spec.minimum >= 0:
            return "^(0([.][0-9]+)?|1([.]0+)?)$"
        if spec.maximum == 1 and spec.minimum == -1:
            return "^-?(0([.][0-9]+)?|1([.]0+)?)$"
        return "^[0-9]+([.][0-9]+)?$"
    return None
