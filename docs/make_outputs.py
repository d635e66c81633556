"""Runs every command of the tutorials for real and records what it printed, for the docs to include.

    python docs/make_outputs.py [--only TUTORIAL[/BLOCK]] [--screenshots-only]

A tutorial marks each block of commands it wants run with a comment on the line before it:

    <!-- run: NAME [tail=N] -->
    ```bash
    python -m trainkit env
    ```

This script runs such a block's commands in order, in a shell at the repository's root, and writes
what they printed (stdout and stderr, as a terminal shows them) to docs/outputs/TUTORIAL/NAME.txt,
which the page includes right after the block, in a code block of its own (a `text` fence around
`--8<-- "TUTORIAL/NAME.txt"`: logs and tables keep their lines and columns). With tail=N only
the last N lines are kept, and the file says how many were left out. docs/outputs/manifest.json
keeps each block's commands as they were run, so the test suite can check that every command line
of a tutorial is one this script ran, word for word: the docs cannot drift from the code.

A block that fails stops the script with its output: a tutorial never shows a failure it did not
mean to. It also takes the report's screenshots for the docs (headless Chromium), from the report
the tutorial's own run wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUTPUTS = DOCS / "outputs"
MANIFEST = OUTPUTS / "manifest.json"
MARK = re.compile(r"<!-- run: (?P<name>[\w-]+)(?P<options>(?: [\w-]+=[\w-]+)*) -->\n```bash\n(?P<body>.*?)\n```", re.S)

# The report the "which precision" tutorial builds, and the parts of it the docs show.
SCREENSHOTS = {"report-summary.png": ("tutorial-out/report.html", "1400,1100"),
               "answer-card.png": ("tutorial-out/answer/answer.html", "1400,1000")}


@dataclass(frozen=True)
class Block:
    """One marked block of a tutorial: its commands, as the page shows them."""

    tutorial: str
    name: str
    commands: str
    tail_lines: int | None
    slurm: str | None
    """"standin": the block runs with tests/slurm_standins.py's sbatch, srun, sacct, squeue and
    scancel first on the PATH, in their "run" mode (every job runs on this machine)."""


def blocks_of(page: Path) -> list[Block]:
    blocks = []
    for m in MARK.finditer(page.read_text()):
        options = dict(option.split("=") for option in m["options"].split())
        unknown = set(options) - {"tail", "slurm"}
        if unknown:
            sys.exit(f"{page}: block {m['name']}: unknown option(s) {', '.join(sorted(unknown))}; "
                     "use tail=N, slurm=standin")
        tail = int(options["tail"]) if "tail" in options else None
        blocks.append(Block(page.stem, m["name"], m["body"], tail, options.get("slurm")))
    return blocks


def tutorial_blocks() -> list[Block]:
    return [block for page in sorted((DOCS / "tutorials").glob("*.md")) for block in blocks_of(page)]


def block_env(block: Block, scratch: Path) -> dict[str, str]:
    # The tutorials' commands are a user's: `pytest` and `python` of this environment first on the PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "100"}
    if block.slurm == "standin":
        sys.path.insert(0, str(ROOT / "tests"))
        from slurm_standins import FakeSlurm  # only this kind of block needs the stand-ins

        env = FakeSlurm(scratch / "slurm", mode="run", partitions=("gpu", "cpu")).env(env)
    return env


def run_block(block: Block, scratch: Path) -> str:
    started = time.monotonic()
    done = subprocess.run(["bash", "-e", "-c", block.commands], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=block_env(block, scratch))
    shown = "\n".join(f"$ {line}" if line and not line.startswith(" ") else line
                      for line in block.commands.splitlines())
    output = done.stdout.rstrip()
    if done.returncode != 0:
        sys.exit(f"{block.tutorial}/{block.name} failed with exit {done.returncode}:\n{shown}\n{output}")
    lines = output.splitlines()
    if block.tail_lines is not None and len(lines) > block.tail_lines:
        lines = [f"[... {len(lines) - block.tail_lines} lines left out ...]"] + lines[-block.tail_lines:]
    print(f"{block.tutorial}/{block.name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return "\n".join(lines) + "\n"


def screenshot(html: Path, png: Path, window: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("the screenshots need Debian's chromium: apt-get install -y chromium")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--no-first-run", "--virtual-time-budget=8000",
                    f"--window-size={window}", f"--screenshot={png}", html.resolve().as_uri()],
                   check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only this tutorial's blocks (its file name without .md), or one "
                                       "block of it: TUTORIAL/NAME")
    parser.add_argument("--screenshots-only", action="store_true", help="only remake the screenshots")
    args = parser.parse_args(argv)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    if not args.screenshots_only:
        scratch = Path(tempfile.mkdtemp(prefix="trainkit-docs-"))
        for block in tutorial_blocks():
            if args.only and args.only not in (block.tutorial, f"{block.tutorial}/{block.name}"):
                continue
            out = OUTPUTS / block.tutorial / f"{block.name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(run_block(block, scratch))
            manifest[f"{block.tutorial}/{block.name}"] = asdict(block)
            MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for png, (html, window) in SCREENSHOTS.items():
        screenshot(ROOT / html, DOCS / "images" / png, window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
