"""The documentation site builds, and its commands are the code's: none can drift unnoticed.

- `mkdocs build --strict` passes: a broken link, a missing page or a missing recorded output fails.
- Every command block of a tutorial was run, word for word, by docs/make_outputs.py (its manifest
  says so) and left its output for the page.
- Every `python -m trainkit|reports|nightly` line of every page parses with the command's own
  parser, so an option renamed in the code fails here even before the outputs are made again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
import make_outputs  # noqa: E402  (docs/ is no package: its script is imported by path)

BLOCK = re.compile(r"```bash\n(.*?)\n```", re.S)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def command_lines(text: str) -> list[str]:
    """Each shell command of the page's bash blocks, continuation lines joined."""
    commands = []
    for block in BLOCK.findall(text):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in ("reference/commands", "reference/config", "tutorials/which-precision"):
        assert f"{page}/index.html" in built
    commands = (tmp_path / "site" / "reference" / "commands" / "index.html").read_text()
    assert "--target-batch" in commands and "--max-noisy-share" in commands and "--preset" in commands


def test_every_tutorial_block_was_run_as_written():
    manifest = json.loads(make_outputs.MANIFEST.read_text())
    blocks = make_outputs.tutorial_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        key = f"{block.tutorial}/{block.name}"
        assert key in manifest, f"{key}: not run yet: python docs/make_outputs.py --only {block.tutorial}"
        assert manifest[key]["commands"] == block.commands, (
            f"{key}: the page's commands differ from those run: python docs/make_outputs.py --only {block.tutorial}")
        assert (make_outputs.OUTPUTS / block.tutorial / f"{block.name}.txt").read_text().strip()


def test_every_tutorial_bash_block_is_marked_to_run():
    for page in sorted((DOCS / "tutorials").glob("*.md")):
        text = page.read_text()
        assert len(BLOCK.findall(text)) == len(make_outputs.blocks_of(page)), (
            f"{page.name}: every bash block of a tutorial needs a <!-- run: NAME --> line before it")


def test_a_changed_command_is_caught(tmp_path):
    # The check above can fail: a page whose block no longer matches what was run.
    page = tmp_path / "which-precision.md"
    page.write_text("<!-- run: matrix -->\n```bash\npytest bench --benchmark-only --preset quick\n```\n")
    manifest = json.loads(make_outputs.MANIFEST.read_text())
    (block,) = make_outputs.blocks_of(page)
    assert manifest["which-precision/matrix"]["commands"] != block.commands


def parser_of(program: str):
    if program == "trainkit":
        from trainkit.commands.cli import build_parser
        return build_parser()
    if program == "reports":
        from trainkit.reports.cli import parser
        return parser()
    from nightly.cli import parser
    return parser()


PYTHON_M = re.compile(r"^python3? -m (trainkit|reports|nightly) (.*)$")


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for page in pages():
        for command in command_lines(page.read_text()):
            for part in command.split(" && "):
                if PYTHON_M.match(part.strip()):
                    found.append((page.relative_to(DOCS).as_posix(), part.strip()))
    return found


@pytest.mark.parametrize(("page", "command"), documented_commands())
def test_documented_command_parses(page, command, tmp_path, monkeypatch):
    # The SLURM pages' commands look for sbatch as they parse: the stand-in cluster provides it.
    from tests.slurm_standins import FakeSlurm

    monkeypatch.setenv("PATH", FakeSlurm(tmp_path / "slurm").env()["PATH"])
    program, rest = PYTHON_M.match(command).groups()
    words = shlex.split(re.sub(r"\[[^\]]*\]", " ", rest))  # [optional] parts of a usage line left out
    if "--" in words:
        words = words[:words.index("--")]  # what follows `--` goes to bench, not to this parser
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parser_of(program).parse_args(words)
        except SystemExit as stop:
            assert stop.code == 0, f"{page}: {command}\n{stderr.getvalue()}"


README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_a_short_landing_page_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    missing = [target for target in LINK.findall(text)
               if not target.startswith(("http://", "https://")) and not (ROOT / target).exists()]
    assert missing == []


def test_the_quick_start_is_two_commands_and_ci_runs_the_second():
    quick_start = text_between(README.read_text(), "## Quick start", "\n## ")
    (block,) = BLOCK.findall(quick_start)
    install_and_bench, install_and_test = block.splitlines()
    assert "pytest bench --benchmark-only" in install_and_bench and "pip install" in install_and_bench
    assert install_and_test.endswith("-m pytest tests -n auto")
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def text_between(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    stop = text.find(end, begin + len(start))
    return text[begin:stop if stop != -1 else len(text)]


def listed_engine_modules(text: str) -> set[str]:
    """The modules the architecture page's engine listing names, as 'room/module.py'."""
    block = text.split("```text\ntrainkit/engine/\n", 1)[1].split("```", 1)[0]
    listed, room = set(), None
    for line in block.splitlines():
        if match := re.match(r"  (\w+)/ ", line):
            room = match.group(1)
        elif match := re.match(r"    (\w+\.py) ", line):
            listed.add(f"{room}/{match.group(1)}")
    return listed


def test_the_architecture_page_lists_every_engine_module_in_its_room():
    page = (DOCS / "explanation/architecture.md").read_text()
    engine = (ROOT / "trainkit/engine").glob("*/*.py")
    on_disk = {f"{p.parent.name}/{p.name}" for p in engine if p.name != "__init__.py"}
    assert listed_engine_modules(page) == on_disk
    # The check can fail: a module listed under a room that does not hold it is caught.
    moved = page.replace("    loop.py ", "  cell/ (planted)\n    loop.py ")
    assert listed_engine_modules(moved) != on_disk
