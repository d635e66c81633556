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
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    assert "--target-batch" in commands and "--min-repeats" in commands and "--preset" in commands
    tutorial_renders_with_code_blocks_and_a_full_outline(tmp_path / "site" / "tutorials" / "which-precision")


def tutorial_renders_with_code_blocks_and_a_full_outline(built: Path) -> None:
    """The start-here tutorial as a browser shows it (headless Chromium's DOM): every command and
    every output in a code block, one H1, and a table of contents holding every section."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", "--virtual-time-budget=3000", f"--user-data-dir={built}/profile",
                           "--dump-dom", (built / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    source = (DOCS / "tutorials" / "which-precision.md").read_text()
    sections = re.findall(r"^## (.+)$", FENCE.sub("", source), re.M)
    assert dom.count("<pre") == source.count("```bash") + len(INCLUDE.findall(source))
    assert dom.count("<h1") == 1
    toc = re.search(r'<nav class="md-nav md-nav--secondary".*?</nav>', dom, re.S)
    assert toc is not None
    entries = [" ".join(e.split()) for e in re.findall(r'<span class="md-ellipsis">(.*?)</span>', toc.group(0), re.S)]
    assert entries == sections


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
    from trainkit.nightly.cli import parser
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
    assert install_and_test.endswith("-m pytest tests -n auto --dist worksteal")
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def text_between(text: str, start: str, end: str) -> str:
    begin = text.index(start)
    stop = text.find(end, begin + len(start))
    return text[begin:stop if stop != -1 else len(text)]


# --- a tutorial's prose against the outputs it shows ---------------------------------------------------
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# A figure of prose: a number with decimals, or one followed by × (a ratio); a sign or ± before it
# is part of how it is written, not of what it says. Integers alone are words ("five seeds", "4096").
FIGURE = re.compile(r"(?<![\w.])[+±-]?(\d+\.\d+|\d+(?=×))")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def tutorials() -> list[Path]:
    return sorted((DOCS / "tutorials").glob("*.md"))


def prose_of(text: str) -> str:
    """What a reader reads as the page's own words: no code blocks, inline code, HTML comments or
    link targets."""
    text = FENCE.sub("", text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"Python\s*[≥>=]*\s*\d+\.\d+", "Python", text)  # a version is no figure
    return re.sub(r"\]\([^)]*\)", "]", text)


def outputs_of(text: str) -> dict[str, str]:
    """The recorded outputs a page includes, by name (which-precision/parity.txt -> parity)."""
    return {Path(name).stem: (DOCS / "outputs" / name).read_text() for name in INCLUDE.findall(text)}


def unsupported_figures(prose: str, outputs: dict[str, str]) -> list[str]:
    """The prose's figures that no number of the outputs gives, rounded as the prose writes it."""
    numbers = [float(n) for n in NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", "\n".join(outputs.values())))]
    missing = []
    for match in FIGURE.finditer(prose):
        figure = match.group(1)
        decimals = len(figure.partition(".")[2])
        if not any(round(n, decimals) == float(figure) for n in numbers):
            missing.append(match.group(0))
    return missing


def verdicts(output: str) -> dict[str, str]:
    """`precision verdict` rows of a parity summary."""
    return dict(re.findall(r"^  (\S+)\s+(reference|equivalent|inconclusive|better|worse|not equivalent)\b",
                           output, re.M))


def seed_rows(output: str) -> dict[tuple[str, int], tuple[float, float]]:
    """(precision, seed) -> (eval loss, ms per step) of a parity run's progress lines."""
    return {(p, int(s)): (float(e), float(ms)) for p, s, e, ms in
            re.findall(r"^\[parity\] \d+/\d+ \S+ (\S+) seed (\d+): eval ([\d.]+), ([\d.]+) ms/step", output, re.M)}


def report_rows(output: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("| batch")]


def _slower_every_seed(o: dict[str, str]) -> bool:
    rows = seed_rows(o["parity"])
    seeds = {s for _, s in rows}
    return all(rows[(p, s)][1] > rows[("fp32", s)][1] for p, s in rows if p != "fp32" for s in [s] if s in seeds)


def _intervals_hold_one(o: dict[str, str]) -> bool:
    intervals = re.findall(r"\(([\d.]+)–([\d.]+)\)", o["report"])
    return bool(intervals) and all(float(lo) <= 1 <= float(hi) for lo, hi in intervals)


CLAIMS: dict[str, list[tuple[str, Any]]] = {
    "which-precision": [
        (r"Every precision is \*inconclusive\* at five seeds",
         lambda o: set(verdicts(o["parity"]).values()) == {"reference", "inconclusive"}),
        (r"amp-bf16 needs four more",
         lambda o: re.search(r"^  amp-bf16 .*; 4 more seeds would decide", o["parity"], re.M)),
        (r"Still inconclusive", lambda o: verdicts(o["parity-9"])["amp-bf16"] == "inconclusive"),
        (r"amp-bf16 is equivalent within 2 %", lambda o: verdicts(o["rejudge"])["amp-bf16"] == "equivalent"),
        (r"amp-bf16 and half-bf16-master train identically here,\s+seed for seed",
         lambda o: all(v == seed_rows(o["parity"])[("half-bf16-master", s)][0]
                       for (p, s), (v, _) in seed_rows(o["parity"]).items() if p == "amp-bf16")),
        (r"every reduced precision took longer per step than fp32, seed for seed", _slower_every_seed),
        (r"every speedup's interval holds 1×", _intervals_hold_one),
        (r"every row flagged for a loaded host|are all flagged for a loaded host",
         lambda o: all("host loaded" in row[-1] for row in report_rows(o["report"]))),
        (r"Both fp32 and amp-bf16 run 4096 samples per micro-batch",
         lambda o: len(re.findall(r"^\[plan\] mlp (?:fp32|amp-bf16): max micro-batch 4096\b", o["plan"], re.M)) == 2),
    ],
}
"""Claims in words that a figure check cannot see: (the words, as a regular expression over the
prose; what the outputs must show for them to be true). A claim is checked wherever its words are."""


def claim_failures(page: str, prose: str, outputs: dict[str, str]) -> list[str]:
    return [words for words, holds in CLAIMS.get(page, []) if re.search(words, prose) and not holds(outputs)]


@pytest.mark.parametrize("page", tutorials(), ids=lambda p: p.stem)
def test_every_output_is_a_code_block_and_the_prose_agrees_with_it(page):
    """Outputs in code blocks (logs and tables keep their lines; an included report's headings
    stay out of the page's outline), and every figure and claim of the prose is what they show."""
    text = page.read_text()
    for name in INCLUDE.findall(text):
        assert re.search(rf'^```text\n--8<-- "{re.escape(name)}"\n```$', text, re.M), f"{name}: not in a code block"
    prose, outputs = prose_of(text), outputs_of(text)
    assert unsupported_figures(prose, outputs) == []
    assert claim_failures(page.stem, prose, outputs) == []


def test_a_figure_or_a_claim_the_outputs_contradict_fails():
    """Planted faults: the tutorial as it was (a speedup interval said to hold 1×, bf16 said slower
    per step everywhere), a figure changed, and an output whose verdict changed."""
    page = DOCS / "tutorials" / "which-precision.md"
    text = page.read_text()
    prose, outputs = prose_of(text), outputs_of(text)
    assert claim_failures("which-precision", prose + " every speedup's interval holds 1×", outputs) == [
        "every speedup's interval holds 1×"]
    assert unsupported_figures(prose.replace("1.56×", "1.66×", 1), outputs) == ["1.66"]
    assert unsupported_figures(prose + " (+0.0031)", outputs) == ["+0.0031"]
    changed = {**outputs, "parity-9": outputs["parity-9"].replace("inconclusive ", "equivalent ")}
    assert claim_failures("which-precision", prose, changed) == ["Still inconclusive"]
    slower = {**outputs, "parity": outputs["parity"].replace("seed 3: eval 0.5126, 1.1 ms",
                                                             "seed 3: eval 0.5126, 0.1 ms")}
    assert claim_failures("which-precision", prose, slower) == [
        "every reduced precision took longer per step than fp32, seed for seed"]


def test_the_pairing_figures_in_the_parity_statistics_are_the_committed_example_s():
    """parity_stats' docstring: fp32's seed spread against the per-seed differences' spread."""
    import statistics

    from trainkit.analysis.parity import stats as parity_stats

    doc = json.loads((ROOT / "reports" / "examples" / "cpu-parity" / "parity.json").read_text())
    ratios = []
    for model in doc["models"].values():
        reference = model["precisions"]["fp32"]["eval_losses"]
        for name, block in model["precisions"].items():
            if name != "fp32":
                diffs = [a - b for a, b in zip(block["eval_losses"], reference)]
                ratios.append(statistics.stdev(reference) / statistics.stdev(diffs))
    wide = sorted(r for r in ratios if r > 1)
    text = " ".join(parity_stats.__doc__.split())
    assert f"is {wide[0]:.0f}-{wide[-1]:.0f}x the differences' in" in text
    assert f"{len(wide)} of {len(ratios)} modes, and {min(ratios):.2f}x in one" in text
    assert "machine" not in doc["records_file"] and not os.path.isabs(doc["records_file"])


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
