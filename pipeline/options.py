"""A job's options, each defined once: a field of the job's config dataclass, made by `option`,
carries its flag's help, choices and check. From the fields, `parser` builds the job's
command line, `parse` reads it (a YAML file given with --config first, the flags over it; or
prints the resolved config with --print-config), `check` runs every field's check (the config
classes call it when made, so a library call, the job and its --dry-run refuse alike), and
`to_yaml` writes a config as the file that replays it.

Options shared by jobs are one definition: `shared` copies another config's field, its
default, help and check included.

Paths mean what the user typed (with_absolute_paths, for the options made with path=True): a
relative path is relative to the folder a job was started from, on the driver, before anything
runs.

A job run directly resolves against its working directory. A job submitted with jobs/submit.py
resolves against the folder it was submitted from (the submission says which, in
SUBMITTED_FROM), so a run written to `runs` lands in that folder's `runs`, not in Ray's temporary
copy of the working dir. A job Ray runs from such a copy without saying where it was submitted
from (a plain `ray job submit --working-dir .`) refuses relative paths with one line: they
would be written into that copy and lost with it. URIs (s3://, file://) are left as they are.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

import yaml

import storage as uris
from model.families import HUB_ID

Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def option(default: Any = MISSING, *, help: str, check: Check | None = None, choices: Sequence[str] | None = None,
           metavar: str | None = None, parse: Callable[[str], Any] | None = None, flag: str | None = None,
           factory: Callable[[], Any] | None = None, file_only: bool = False, path: bool = False) -> Any:
    """A config field that is an option: `flag` (default --the-field-name; a bool field that
    defaults to True names a --no-... flag), `parse` for a type argparse cannot read from its
    annotation, `file_only` for an option a --config file gives but the command line does not,
    `path` for a path or URI (made absolute before the run: with_absolute_paths)."""
    metadata = {"help": help, "check": check, "choices": choices, "metavar": metavar, "parse": parse,
                "flag": flag, "file_only": file_only, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def shared(config: type, name: str, **changes: Any) -> Any:
    """The option `name` of another job's config, as it is defined there (changes: of its metadata)."""
    f = next(f for f in fields(config) if f.name == name)
    return field(default=f.default, metadata={**f.metadata, **changes})


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}, not {v}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be above {low:g}, not {v}"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}, not {v}"


def options(config: type) -> list[Field]:
    return [f for f in fields(config) if "help" in f.metadata]


def flag_of(f: Field) -> str:
    if f.metadata["flag"]:
        return f.metadata["flag"]
    return f"--{f.name.replace('_', '-')}"


def check(config: Any) -> None:
    """A ValueError naming the first option whose value its check refuses (None: not given)."""
    for f in options(type(config)):
        value = getattr(config, f.name)
        problem = f.metadata["check"](value) if f.metadata["check"] and value is not None else None
        if problem:
            raise ValueError(f"{flag_of(f)} {problem}")


@functools.cache
def type_hints(config: type) -> dict[str, Any]:
    """The config's field types, resolved once (its annotations are strings)."""
    return typing.get_type_hints(config)


def value_type(config: type, f: Field) -> Any:
    """The field's type without None: int for `int | None`."""
    hint = type_hints(config)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def add_option(parser: argparse.ArgumentParser, config: type, f: Field) -> None:
    meta, kind = f.metadata, value_type(config, f)
    if required(f):
        said = " (required)"
    elif f.default is None or "default" in meta["help"] or kind is bool:
        said = ""
    else:
        said = f" (default {f.default})"
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + said}
    if kind is bool:
        kwargs["action"] = "store_false" if f.default is True else "store_true"
    else:
        kwargs.update(type=meta["parse"] or kind, choices=meta["choices"],
                      metavar=meta["metavar"] or (None if meta["choices"] else flag_of(f)[2:].upper().replace("-", "_")))
    parser.add_argument(flag_of(f), **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusals are one line: `job: what is wrong`."""

    @property
    def job(self) -> str:
        return self.prog.removesuffix(".py")

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.job}: {message} (--help lists the options)\n")


def parser(config: type, description: str | None, prog: str | None = None) -> Parser:
    """The job's parser: one flag per option of `config`, then --config and --print-config; add
    the job's own flags (those that are not part of a run: --ray, --dry-run) to it."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in options(config):
        if not f.metadata["file_only"]:
            add_option(p, config, f)
    p.add_argument("--config", metavar="FILE", help="a YAML file of options (as --print-config writes); flags "
                   "given beside it win")
    p.add_argument("--print-config", action="store_true", help="print the run's options as YAML and exit")
    return p


def from_file(path: str, config: type, command_line_only: dict[str, str] | None = None) -> dict[str, Any]:
    """The options a YAML file gives, by field name (a flag's spelling, --batch-size or
    batch-size, is accepted too); a ValueError naming a key that is no option, or a value of
    the wrong type. command_line_only: the job's own flags (key -> flag: --ray, --dry-run), which
    are not part of a run and so not of its file."""
    try:
        values = yaml.safe_load(uris.read_bytes(path)) or {}  # on the local disk or in object storage
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: {' '.join(str(e).split())}") from None  # YAML's message: one line
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of options, found {type(values).__name__}")
    by_name = {f.name: f for f in options(config)}
    by_name.update({flag_of(f).lstrip("-").replace("-", "_"): f for f in options(config)})
    read: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).lstrip("-").replace("-", "_")
        f, own = by_name.get(name), (command_line_only or {}).get(name)
        if f is None and own:
            raise ValueError(f"--config {path}: {key!r} is {own}, which the command line gives, not a --config file")
        if f is None:
            near = difflib.get_close_matches(str(key), [x.name for x in options(config)], n=1)
            raise ValueError(f"--config {path}: {key!r} is not an option of this job"
                             + (f" (did you mean {near[0]!r}?)" if near else ""))
        read[f.name] = typed(config, f, value, path)
    return read


def typed(config: type, f: Field, value: Any, path: str) -> Any:
    """A file's value as the field takes it: text through the flag's parser, a list as a tuple."""
    kind = value_type(config, f)
    if value is None:
        return None
    if isinstance(value, str) and kind is not str and (f.metadata["parse"] or kind in (int, float)):
        try:
            return (f.metadata["parse"] or kind)(value)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"--config {path}: {f.name}: {e}") from None
        except ValueError:
            raise ValueError(f"--config {path}: {f.name} takes {kind.__name__}, not {value!r}") from None
    if isinstance(value, list):
        value = tuple(value)
    origin = typing.get_origin(kind) or kind
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, origin) or (origin is int and isinstance(value, bool)):
        raise ValueError(f"--config {path}: {f.name} takes {getattr(kind, '__name__', kind)}, not {value!r}")
    return value


def parse(p: Parser, config: type, argv: list[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """(the config, the parsed flags): the dataclass's defaults, under the --config file's
    options, under the flags given. Exits with one line when an option is missing or refused;
    with --print-config, prints the config as YAML and exits 0."""
    args = p.parse_args(argv)
    values = {}
    try:
        if args.config:
            run_options = {f.name for f in options(config)} | {"help", "config", "print_config"}
            own = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings and a.dest not in run_options}
            values.update(from_file(absolute(args.config, "--config") or args.config, config, own))
        values.update({f.name: getattr(args, f.name) for f in options(config) if hasattr(args, f.name)})
        missing = [flag_of(f) for f in options(config) if required(f) and f.name not in values]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (give {'it' if len(missing) == 1 else 'them'} as "
                             f"{'a flag' if len(missing) == 1 else 'flags'} or in --config)")
        made = config(**values)
    except ValueError as e:
        p.exit(2, f"{p.job}: {e}\n")
    if args.print_config:
        sys.stdout.write(to_yaml(made))
        p.exit(0)
    return made, args


def to_yaml(config: Any) -> str:
    """Every option of the config, as a --config file (tuples as YAML lists, read back as tuples)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump({f.name: plain(getattr(config, f.name)) for f in options(type(config))}, sort_keys=False)


# ---------------------------------------------------------------- paths

SUBMITTED_FROM = "DETR_SUBMITTED_FROM"  # set by jobs/submit.py in the job's environment


class PathError(ValueError):
    """A path a job cannot take as given, said in one line."""


def in_ray_working_dir_copy(cwd: str | None = None) -> bool:
    """Whether this process runs in Ray's copy of a job's uploaded working dir."""
    parts = os.path.normpath(cwd or os.getcwd()).split(os.sep)
    return "runtime_resources" in parts and "working_dir_files" in parts


def absolute(value: str | None, flag: str) -> str | None:
    """value as an absolute path (or the URI itself), resolved as the module docstring says."""
    if value is None or "://" in value:
        return value
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    base = os.environ.get(SUBMITTED_FROM)
    if base is None:
        if in_ray_working_dir_copy():
            raise PathError(f"{flag} {value} is a relative path, and this job runs in Ray's temporary copy of the "
                            "working dir, where it would be lost: give an absolute path or s3:// URI, or submit "
                            "with jobs/submit.py, which resolves relative paths against the folder you submit from")
        base = os.getcwd()
    return os.path.normpath(os.path.join(base, value))


def model_source(value: str | None, flag: str) -> str | None:
    """A checkpoint or model folder as absolute() makes it, or a hub model id (org/name) kept as
    it is where no such local path exists."""
    if value and HUB_ID.fullmatch(value):
        base = os.environ.get(SUBMITTED_FROM) or os.getcwd()
        if not os.path.exists(os.path.join(base, value)):
            return value
    return absolute(value, flag)


MODEL_FIELDS = ("checkpoint", "init")  # the fields that name a model: a path, a URI or a hub id


def with_absolute_paths(config: Any) -> Any:
    """A config with its path options (path=True) absolute."""
    paths = [f for f in options(type(config)) if f.metadata["path"]]
    return dataclasses.replace(config, **{
        f.name: (model_source if f.name in MODEL_FIELDS else absolute)(getattr(config, f.name), flag_of(f))
        for f in paths})
