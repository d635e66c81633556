"""Writes the reference pages at build time from the code itself, so they cannot drift from it.

Run by mkdocs-gen-files during `mkdocs build`: the commands' help from their argparse parsers (and
bench's options from pytest's own help), the run configuration from RunConfig's field docstrings,
and the precision table from trainkit/engine/spec/precision_facts.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["COLUMNS"] = "100"  # argparse wraps its help at the terminal's width: fix it for the page

from trainkit.commands.cli import build_parser as trainkit_parser  # noqa: E402
from trainkit.engine.spec import precision_facts  # noqa: E402
from trainkit.engine.spec.config import RunConfig, field_help  # noqa: E402
from trainkit.nightly.cli import parser as nightly_parser  # noqa: E402
from trainkit.reports.cli import parser as reports_parser  # noqa: E402


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers here; it has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_section(program: str, parser: argparse.ArgumentParser, level: int = 2) -> str:
    """The command's help, then each subcommand's, as deep as they go (`reports history changes`)."""
    parts = [f"{'#' * level} `{program}`\n", "```text", parser.format_help().rstrip(), "```\n"]
    for name, sub in subcommands(parser).items():
        parts.append(command_section(f"{program} {name}", sub, min(level + 1, 4)))
    return "\n".join(parts)


def bench_options() -> str:
    """bench's own option group, cut out of `pytest bench --help` (pytest builds it from conftest)."""
    help_text = subprocess.run([sys.executable, "-m", "pytest", "bench", "--help"], cwd=ROOT, check=True,
                               capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"}).stdout
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("trainkit benchmark matrix"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    return "\n".join(lines[start:end]).rstrip()


def commands_page() -> str:
    return "\n".join([
        "# Commands\n",
        "Generated from the commands' own parsers at build time: what `--help` prints.\n",
        command_section("python -m trainkit", trainkit_parser()),
        command_section("python -m reports", reports_parser()),
        command_section("python -m nightly", nightly_parser()),
        "## `pytest bench --benchmark-only`\n",
        "bench's options, as `pytest bench --help` lists them (with pytest's and pytest-benchmark's own).\n",
        "```text", bench_options(), "```\n",
    ])


def config_page() -> str:
    rows = ["| field | option | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(RunConfig):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else "required")
        meaning = field_help(field.name).replace("|", "\\|")
        option = "--" + field.name.replace("_", "-")
        rows.append(f"| `{field.name}` | `{option}` | `{default!r}` | {meaning} |")
    return "\n".join([
        "# Run configuration\n",
        "Every field of `trainkit.engine.spec.config.RunConfig`, generated from its docstrings. Each is an option of "
        "`python -m trainkit run` (booleans as `--flag` / `--no-flag`) and a key of a record's `config`.\n",
        *rows, ""])


def precisions_page() -> str:
    fields = [f for f in dataclasses.fields(precision_facts.PrecisionFacts) if f.name not in ("color", "summary")]
    header = "| " + " | ".join(f.name for f in fields) + " |"
    rows = [header, "|" + "---|" * len(fields)]
    for facts in precision_facts.PRECISION_FACTS.values():
        rows.append("| " + " | ".join(f"`{getattr(facts, f.name)}`" for f in fields) + " |")
    summaries = [f"- `{facts.name}`: {facts.summary}" for facts in precision_facts.PRECISION_FACTS.values()]
    return "\n".join([
        "# Precision modes\n",
        "Generated from `trainkit/engine/spec/precision_facts.py`, the one table every part of trainkit reads.\n",
        *summaries, "", *rows, ""])


for path, text in (("reference/commands.md", commands_page()), ("reference/config.md", config_page()),
                   ("reference/precisions.md", precisions_page())):
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
