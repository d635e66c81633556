"""Command-line option types and the parser, shared by trainkit's CLI, bench, reports and nightly.

Each type below is an argparse `type=`: it parses one value and, when the value is bad, raises
ArgumentTypeError with a message that names the value and what is valid. So an option is validated
where it is parsed, and the parser that owns it reports it: `python -m trainkit`, `reports` and
`nightly` print one line and exit 2 (their Parser raises UsageError); bench's options are pytest's,
so pytest reports a usage error itself.

The options more than one command takes (--device, --cell-timeout, --memory-limit-gb, --model,
--precision, --gpus, --output, ...) are defined once, at the end, as `Option`s that each command
adds to its own parser (argparse's or pytest's); outputs are checked as they are parsed
(`output_file`, `output_dir`), so a place that cannot be written is refused before any cell runs.

No torch here: reading options must not cost torch's import.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from .choices import DEVICES, MODELS
from .precision_facts import precision_names


class UsageError(Exception):
    """Bad input: the command prints its message as one line and exits with status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageErrors (one line, exit 2) instead of usage banners."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _named(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    parse.__name__ = name  # argparse names the type in its own messages
    return parse


def integer(minimum: int | None = None) -> Callable[[str], int]:
    """A whole number >= minimum (any, for a value whose bounds its config checks)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value

    return _named(parse, "int")


def number(minimum: float | None = 0.0, above: bool = False) -> Callable[[str], float]:
    """A number >= minimum (> minimum with above=True; any, for a value whose bounds its config
    checks); NaN is refused where there is a minimum."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if minimum is not None and not (value > minimum if above else value >= minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum:g}, got {text!r}")
        return value

    return _named(parse, "float")


def fraction(text: str) -> float:
    """A share: 0.07 or 7%."""
    return number()(text[:-1]) / 100 if text.endswith("%") else number()(text)


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, or None for "none" (or "off")."""
    def parse_optional(text: str) -> Any:
        return None if text.lower() in ("none", "off") else parse(text)

    return _named(parse_optional, getattr(parse, "__name__", "value"))


def choice(valid: Iterable[str] | Callable[[], Iterable[str]]) -> Callable[[str], str]:
    """One of `valid` (a callable is asked when a value is parsed: a table that can grow)."""
    def parse(text: str) -> str:
        names = tuple(valid() if callable(valid) else valid)
        if text not in names:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(names)})")
        return text

    return _named(parse, "choice")


def comma_list(item: Callable[[str], Any], separator: str = ",") -> Callable[[str], tuple[Any, ...]]:
    """A comma list of `item`s, in order, without repeats (a matrix axis: "mlp,gpt" or "1,2,4");
    another separator for items that hold commas themselves (allocator settings: ";")."""
    def parse(text: str) -> tuple[Any, ...]:
        values = [item(part.strip()) for part in text.split(separator) if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"empty list: {text!r}")
        return tuple(dict.fromkeys(values))

    return _named(parse, "list")


# --- outputs, checked where they are parsed ---------------------------------------------------------
def _writable_dir(directory: str, text: str) -> None:
    """A file can be made in `directory`: it is a directory we may write in, or its nearest existing
    ancestor is (whether a command creates a missing directory, or refuses it right after parsing
    as `trainkit run` does, is the command's)."""
    if not os.path.exists(directory):
        parent = os.path.dirname(directory)
        if parent == directory:  # a filesystem root that does not exist: nothing to create it in
            raise argparse.ArgumentTypeError(f"{text!r}: directory {directory!r} does not exist")
        _writable_dir(parent, text)
        return
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{text!r}: {directory!r} is not a directory, so nothing can be written there")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write in directory {directory!r} (permission denied)")


def output_file(text: str) -> str:
    """A file the command will write: not an existing directory, not a read-only file, in a place
    that can be written. Checked when the option is parsed, so a bad output fails before any cell
    runs, not after."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file (e.g. {os.path.join(text, 'out')})")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: cannot overwrite it (permission denied)")
    _writable_dir(os.path.dirname(path), text)
    return text


def output_dir(text: str) -> str:
    """A directory the command writes files into: an existing one it may write in, or a new one
    it can create (the command creates it)."""
    _writable_dir(os.path.abspath(text), text)
    return text


# --- options shared by several commands, each defined once --------------------------------------------
_DEFAULT = object()


@dataclass(frozen=True)
class Option:
    """A command-line option as every command that takes it spells it: its flag, its argparse type
    (which validates the value), its metavar and a help text. `add` puts it on an argparse parser
    or group, or on a pytest option group; a command may reword the help, rename the flag or
    change the default where its meaning differs (bench's --cell-memory-limit-gb), never the type."""

    flag: str
    type: Callable[[str], Any] | None
    metavar: str | None
    help: str
    default: Any = None
    short: str | None = None
    """A one-letter alias (-o); pytest reserves lower-case short options, so bench leaves it out."""
    action: str | None = None
    """argparse's action (store_true for a switch); None: store the parsed value."""

    def add(self, parser: Any, *, flag: str | None = None, help: str | None = None,
            default: Any = _DEFAULT, short: bool = True, **extra: Any) -> None:
        """Add the option to `parser` (argparse: add_argument; pytest: addoption); `extra` goes to
        it unchanged (dest, required, action)."""
        names = [flag or self.flag] + ([self.short] if self.short and short else [])
        kwargs = {"type": self.type, "metavar": self.metavar, "action": self.action, "help": help or self.help,
                  "default": self.default if default is _DEFAULT else default, **extra}
        add = parser.add_argument if hasattr(parser, "add_argument") else parser.addoption
        add(*names, **{k: v for k, v in kwargs.items() if v is not None or k == "default"})


def model_spec(text: str) -> str:
    """A model (an argparse type): a built-in's name, or a workload's spec (MODULE:FUNCTION, MODULE, a
    plugin's name, hf:..., timm:...). Only its form is checked here: resolving it imports torch and
    the user's code, which the commands do where they make the configs (config_options.model_fields,
    bench's conftest), each still in one line before any cell starts."""
    if text in MODELS:
        return text
    if not text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"invalid model: {text!r} (a built-in: {', '.join(MODELS)}; or a workload's "
                                         "spec, e.g. mypkg.models:my_workload)")
    return text


model_spec.__name__ = "model"  # argparse names the type in its own messages
precision_name = choice(precision_names)
"""One precision mode of trainkit's table, read when the value is parsed (an argparse type)."""

DEVICE = Option("--device", choice(DEVICES), None, "where the cells run: auto (a GPU if one is visible), cpu or cuda "
                "(default: auto)", default="auto")
CELL_TIMEOUT = Option("--cell-timeout", number(0, above=True), "SECONDS",
                      "end a cell as 'timeout' after this many seconds (default: 900)")
# Why a memory cap is refused on a GPU: the commands and the bench say it in the same words.
MEMORY_LIMIT_ON_GPU = ("caps a CPU worker's address space (RLIMIT_AS); CUDA reserves far more address space "
                       "than memory, so on a GPU it would fail every cell (the GPU's memory is the limit there)")
MEMORY_LIMIT_GB = Option("--memory-limit-gb", number(0, above=True), "GB",
                         "cap each CPU worker's extra address space: an allocation past it ends the cell as 'oom' "
                         "instead of exhausting the machine (CPU cells only)")
MODELS_LIST = Option("--model", comma_list(model_spec), "A,B",
                     f"models: built-ins ({', '.join(MODELS)}) or workloads' specs (MODULE:FUNCTION, MODULE, a "
                     "plugin's name, hf:..., timm:...; python -m trainkit workloads)")
PRECISIONS_LIST = Option("--precision", comma_list(precision_name), "A,B",
                         "precision modes of trainkit's table, e.g. fp32,amp-bf16,half-bf16")
GPUS_LIST = Option("--gpus", comma_list(integer(1)), "N,N", "GPU counts (CPU ranks on a CPU), integers >= 1")
OUTPUT = Option("--output", output_file, "FILE.json", "write the result here", short="-o")
REPORT = Option("--report", output_file, "FILE.html", "also write an HTML page (needs trainkit[reports])")
STEPS = Option("--steps", integer(1), "N", "timed optimizer steps per cell, after the warmup")
WARMUP_STEPS = Option("--warmup-steps", integer(0), "N", "untimed optimizer steps per cell before the timed ones")
LR = Option("--lr", number(0, above=True), "X", "learning rate of every cell (default: each model's recipe)")
REPEATS = Option("--repeats", integer(1), "N", "run every cell N times, each in fresh worker processes", default=1)
HTML_OUTPUT = Option("--output", output_file, None, "HTML file to write", short="-o")
"""The reports' pages (the command makes the missing directories of the place named)."""
QUIET = Option("--quiet", None, None, "no progress on stderr (otherwise a line every 0.5 s; "
               "TRAINKIT_PROGRESS_INTERVAL_S sets the seconds)", default=False, short="-q", action="store_true")
