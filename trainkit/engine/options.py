"""Command-line option types and the parser, shared by trainkit's CLI, bench, reports and nightly.

Each type below is an argparse `type=`: it parses one value and, when the value is bad, raises
ArgumentTypeError with a message that names the value and what is valid. So an option is validated
where it is parsed, and the parser that owns it reports it: `python -m trainkit`, `reports` and
`nightly` print one line and exit 2 (their Parser raises UsageError); bench's options are pytest's,
so pytest reports a usage error itself.

No torch here: reading options must not cost torch's import.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, NoReturn


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
