"""Command-line options: generated from the typed configs, checked, and turned back into configs.

The machinery every entry point uses: `add_config_options` declares one option per field
of a config dataclass (type, default, help, choices ... from the field), so each default is
written once, in its dataclass; `config_from_args` builds the config back from the parsed
options; `add_runtime_options` declares the options every script shares (--bert_path and
RuntimeConfig's --device, --amp, --threads). The range rules (POSITIVE, AT_LEAST_1, ...),
`check_ranges` and the output-path checks are here too, shared by every command.

Each command's own options, checks and configs are in its module beside this one:
lib.cli.train (train.py), lib.cli.evaluate (eval.py, test.py, testall.py), lib.cli.retrieve
(retrieve.py), lib.cli.ablate (ablate.py), lib.cli.analyze (analyze.py).
"""
import argparse
import math
import os
import types
import typing
from dataclasses import MISSING, fields

from lib.errors import XDimError
from lib.model.bert import DEFAULT_BERT
from lib.runtime.device import RuntimeConfig


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option help with a default only when it says something (not None, False, '' or []; a default
    of 0 is shown); the epilog (e.g. the list of similarities) kept line by line."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def option_type(config_field):
    """The argparse `type` of a config field: its metadata's `type` (the command line's form of a
    field that the entry point converts), else `X` for `X`, `X | None`, `tuple[X, ...]` and their mixes."""
    if "type" in config_field.metadata:
        return config_field.metadata["type"]
    kind = config_field.type
    while typing.get_origin(kind) in (types.UnionType, typing.Union, tuple):
        kind = next(arg for arg in typing.get_args(kind) if arg not in (type(None), Ellipsis))
    return kind


def add_config_options(parser, config_class, skip=()):
    """Declare an option for each field of the dataclass `config_class` whose metadata holds a
    help line (except `skip`): `--NAME` with the field's type (`option_type`) and default.

    A bool field is a flag (default False), or `--NAME/--no-NAME` when its metadata says
    `negatable`. The metadata's `choices`, `metavar`, `nargs` and `required` pass through; fields
    that share a metadata `one_of` name form a group of which exactly one must be given. The
    configs' fields are thus the one place where an option, its type and its default are written.
    """
    groups = {}
    for f in fields(config_class):
        if "help" not in f.metadata or f.name in skip:
            continue
        target = parser
        if "one_of" in f.metadata:
            if f.metadata["one_of"] not in groups:
                groups[f.metadata["one_of"]] = parser.add_mutually_exclusive_group(required=True)
            target = groups[f.metadata["one_of"]]
        extra = {key: f.metadata[key] for key in ("choices", "metavar", "nargs", "required") if key in f.metadata}
        if option_type(f) is bool:
            if f.metadata.get("negatable"):
                extra["action"] = argparse.BooleanOptionalAction
            elif f.default is not False:
                raise TypeError(f"{config_class.__name__}.{f.name}: a flag must default to False")
            else:
                extra["action"] = "store_true"
            target.add_argument(f"--{f.name}", default=f.default, help=f.metadata["help"], **extra)
            continue
        target.add_argument(f"--{f.name}", type=option_type(f), default=argparse_default(f), help=f.metadata["help"],
                            **extra)
    return parser


def argparse_default(config_field):
    """The option's default: the field's, a list for a tuple default (as argparse gives for nargs),
    None for a field without a default (a required option)."""
    default = config_field.default
    if default is MISSING:
        default = None if config_field.default_factory is MISSING else config_field.default_factory()
    return list(default) if isinstance(default, tuple) else default


def config_from_args(config_class, args, **values):
    """`config_class` built from the parsed options of its option fields (add_config_options; each must
    be in `args`), lists turned into tuples, and `values` for fields that are not options."""
    for f in fields(config_class):
        if "help" in f.metadata and f.name not in values:
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**values)


def add_runtime_options(parser):
    """Options every script shares: which BERT, and where and how the work runs (RuntimeConfig)."""
    parser.add_argument("--bert_path", default=None,
                        help="BERT to use: a hub name or a local directory holding "
                             "config.json, vocab.txt and (for training) the weights. "
                             f"Default: {DEFAULT_BERT} for training; for a checkpoint, "
                             "the BERT architecture it was saved with.")
    return add_config_options(parser, RuntimeConfig)


def runtime_config(args):
    """The RuntimeConfig of parsed options that include `add_runtime_options`."""
    return config_from_args(RuntimeConfig, args)


# ---------------------------------------------------------------- checks

# Rules for numeric options: (test, what the value must be).
POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a positive number")
NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
COUNT = (lambda v: v >= 0, "0 or more")
WORKERS = (lambda v: v >= 0, "0 (load in the main process) or more")
THREADS = (lambda v: v >= 0, "0 (automatic) or more")
# The runtime options every command checks (RuntimeConfig's numbers).
RUNTIME_RANGES = {"threads": THREADS}
def check_ranges(opt, ranges):
    """XDimError naming the first option of `ranges` ({name: (test, requirement)}) whose value fails its test."""
    for name, (test, requirement) in ranges.items():
        value = getattr(opt, name)
        if not test(value):
            raise XDimError(f"--{name} {value}: must be {requirement}")


def nearest_existing(path):
    """`path`, or its nearest parent that exists."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_folder(option, folder, shown=None):
    """XDimError unless `folder` is a writable folder or can be created as one; the message names
    the option's value `shown` (default `folder`), e.g. an index whose parent `folder` must be writable."""
    existing = nearest_existing(os.path.abspath(folder))
    shown = folder if shown is None else shown
    if not os.path.isdir(existing):
        raise XDimError(f"{option} {shown}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise XDimError(f"{option} {shown}: {existing} is not writable")


def check_output_file(option, path):
    """XDimError unless `path` can be written: its folder exists and is writable, it is no folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise XDimError(f"{option} {path}: is a folder, give a file name")
    if not os.path.isdir(folder):
        raise XDimError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise XDimError(f"{option} {path}: not writable")
