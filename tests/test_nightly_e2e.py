"""The whole nightly job on the CPU, as CI runs it: `python -m nightly run` with the tiny preset (the mlp
cells, 3 repeats in fresh workers): pre-flight, matrix, report, comparison; then promote the run, gate it
against its own baseline (passes), a doctored slower copy (fails, naming the cells), and a baseline of
another environment (no comparable baseline). One real run per module; everything else reads it. The
run is the command's function in this process (a fresh interpreter and its fork server cost ~4 s
here and check nothing more: `python -m nightly` only exits with what main returns); the fresh
`python -m nightly` processes are the torn comparison's and the refused runs' below."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainkit.engine.spec.schema import fingerprint, headline_memory, read_jsonl
from trainkit.nightly import BAD_INPUT, INCONCLUSIVE, INFRASTRUCTURE, NO_BASELINE, PASS, REGRESSION
from trainkit.nightly.baselines import MANIFEST, cannot_judge, load_all, slug
from trainkit.nightly.cli import main
from trainkit.nightly.rundir import RunDir
from trainkit.reports.verdict import Samples

from .conftest import REPO as ROOT

pytestmark = pytest.mark.slow
CELLS = ("mlp-fp32-bs16-ga1-gpus1", "mlp-fp32-bs16-ga2-gpus1", "mlp-amp-bf16-bs16-ga1-gpus1",
         "mlp-amp-bf16-bs16-ga2-gpus1")


def nightly_env() -> dict[str, str]:
    """The job's environment without GitHub's variables (a CI that runs these tests under GitHub
    Actions must not get this run's summary), on main at a fixed commit (so promote accepts it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env.update(GITHUB_REF_NAME="main", TRAINKIT_GIT_COMMIT="0123456789abcdef", PYTHONUNBUFFERED="1")
    return env


def nightly(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nightly", *args], cwd=ROOT, env=nightly_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tonight(tmp_path_factory):
    """One real nightly run on the CPU: 4 mlp cells of the tiny preset x 3 repeats, in the job's
    environment, started in the checkout; `done.stdout` is what nightly printed (bench's own output,
    its subprocess's, goes to this process's)."""
    out = tmp_path_factory.mktemp("nightly") / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        for name in [n for n in os.environ if n.startswith("GITHUB_")]:
            mp.delenv(name)
        for name, value in nightly_env().items():
            mp.setenv(name, value)
        mp.chdir(ROOT)
        status = main(["run", "--out", str(out), "--preset", "tiny", "--repeats", "3",
                       "--baselines", str(out.parent / "no-baselines"), "--", "--model", "mlp", "--phase-steps", "0"])
    done = subprocess.CompletedProcess(["python", "-m", "nightly", "run"], status, printed.getvalue(), "")
    assert done.returncode == PASS, done.stdout[-4000:]
    return RunDir(str(out)), done


@pytest.fixture
def baselines(tonight, tmp_path):
    """Tonight's run promoted into a fresh baselines directory (forced: a busy 2-core machine's repeats
    may spread past the noise limit, and promotion refuses a baseline that cannot judge a cell)."""
    run, _ = tonight
    root = str(tmp_path / "baselines")
    assert main(["promote", run.root, "--baselines", root, "--force"]) == PASS
    return root


def test_the_run_goes_through_every_stage_and_leaves_every_artifact(tonight):
    run, done = tonight
    lines = [line for line in done.stdout.splitlines() if line.startswith(("nightly ", "trainkit nightly"))]
    assert lines[0].startswith("nightly pre-flight: pass: no GPU: CPU ")
    assert lines[1] == "nightly matrix: 4 cells x 3 repeats (tiny): 12 ok"
    assert lines[2].startswith("nightly report: wrote ")
    assert lines[3].startswith(f"nightly comparison: {NO_BASELINE} for cpu ")
    assert lines[4].startswith(f"trainkit nightly: {NO_BASELINE} (exit 0)")
    for name in ("preflight.json", "results.jsonl", "benchmark.json", "report.html", "report.csv", "report.md",
                 "summary.md", "nightly.json"):
        assert os.path.getsize(run.path(name)) > 0, name
    records = read_jsonl(run.path("results.jsonl"))
    assert sorted((r["cell_id"], r["repeat"]) for r in records) == sorted((c, i) for c in CELLS for i in range(3))
    assert len({r["worker_pids"][0] for r in records}) == 12  # every repeat in its own worker process
    with open(run.path("benchmark.json")) as f:
        assert len(json.load(f)["benchmarks"]) == 12
    matrix = run.stages()["matrix"]
    assert (matrix["preset"], matrix["repeats"], matrix["statuses"]) == ("tiny", 3, {"ok": 12})
    summary = Path(run.path("summary.md")).read_text(encoding="utf-8")
    assert summary.startswith(f"# trainkit nightly: ℹ️ {NO_BASELINE} (exit 0)")
    assert f"`python -m nightly promote {run.root}`" in summary
    for cell in CELLS:
        assert f"| {cell} | ok | 3/3 |" in summary


def test_the_summary_gives_each_cell_its_median_and_spread_over_the_repeats(tonight):
    run, _ = tonight
    records = read_jsonl(run.path("results.jsonl"))
    summary = Path(run.path("summary.md")).read_text(encoding="utf-8")
    for cell in CELLS:
        values = tuple(r["throughput_samples_per_s"] for r in records if r["cell_id"] == cell)
        samples = Samples(values)
        assert f"| {cell} | ok | 3/3 | {samples.median():,.1f} | {samples.spread():.1%} |" in summary


def test_promote_keys_the_baseline_by_the_runs_fingerprint(tonight, baselines):
    run, _ = tonight
    (baseline,) = load_all(baselines)
    fp = fingerprint(read_jsonl(run.path("results.jsonl"))[0]["env"])
    assert baseline.fingerprint == fp and os.path.basename(baseline.path) == slug(fp)
    m = baseline.manifest
    assert (m["preset"], m["repeats"], m["cells"], m["records"], m["statuses"]) == ("tiny", 3, 4, 12, {"ok": 12})
    # Promotion refuses a run holding cells it cannot judge (a busy 2-core machine's repeats may spread
    # past 10 %); the fixture forces it, and the manifest names those cells.
    unjudged = cannot_judge(read_jsonl(run.path("results.jsonl")))
    assert m["branch"] == "main" and m["forced"] is bool(unjudged) and m["cannot_judge"] == unjudged
    assert "--preset" in m["command"]
    with open(baseline.results) as f, open(run.path("results.jsonl")) as g:
        assert f.read() == g.read()


def test_the_run_against_its_own_baseline_passes(tonight, baselines, tmp_path, capsys):
    run, _ = tonight
    again = ["compare", "--out", str(tmp_path / "again"), "--candidate", run.path("results.jsonl"),
             "--baselines", baselines]
    # Without the noise limit nothing moved, so it passes.
    assert main([*again, "--max-spread", "none"]) == PASS
    out = capsys.readouterr().out
    assert "nightly comparison: PASS: 0 gated cell(s) regressed or failed of 4" in out
    assert RunDir(str(tmp_path / "again")).outcome().label == "pass"
    # With it, a cell whose repeats spread more than 10 % (a busy 2-core machine) could hide any change
    # within its threshold: the gate cannot vouch even for the same numbers, and says so.
    # The gate judges throughput and the headline memory: a cell is unseen when either spreads.
    records = read_jsonl(run.path("results.jsonl"))
    measure = headline_memory(r["memory"] for r in records)

    def spread(cell: str, value) -> float:
        return Samples(tuple(value(r) for r in records if r["cell_id"] == cell)).spread()

    noisy = [c for c in CELLS if max(spread(c, lambda r: r["throughput_samples_per_s"]),
                                     spread(c, lambda r: r["memory"][measure])) > 0.10]
    assert main(again) == (INCONCLUSIVE if noisy else PASS)


def test_a_cut_off_copy_of_the_results_is_gated_on_its_complete_records(tonight, baselines, tmp_path):
    """The matrix killed while appending its 13th record: the gate reads the 12 before it, and the
    command says so once on stderr, though the comparison and the summary both read the file."""
    run, _ = tonight
    torn = tmp_path / "torn.jsonl"
    text = Path(run.path("results.jsonl")).read_text()
    torn.write_text(text + text.splitlines()[0][:120])
    done = nightly("compare", "--out", str(tmp_path / "torn"), "--candidate", str(torn), "--baselines", baselines,
                   "--max-spread", "none")  # the 12 records unchanged pass, however noisy this machine is
    assert done.returncode == PASS, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"warning: {torn} line 13 is cut off (a run killed while writing it?); "
                                        "read the 12 complete records before it"]
    assert "nightly comparison: PASS: 0 gated cell(s) regressed or failed of 4" in done.stdout


def doctored(run: RunDir, path: str) -> str:
    """Tonight's results, twice as slow: throughput halved, every step time doubled."""
    with open(path, "w") as f:
        for record in read_jsonl(run.path("results.jsonl")):
            record["throughput_samples_per_s"] /= 2
            steps = record["step_time_s"]
            steps.update({k: steps[k] * 2 for k in ("median", "iqr", "min", "max", "mean")},
                         values=[v * 2 for v in steps["values"]])
            f.write(json.dumps(record) + "\n")
    return path


def test_a_doctored_slower_candidate_fails_and_names_its_cells(tonight, baselines, tmp_path, capsys):
    run, _ = tonight
    slow = doctored(run, str(tmp_path / "slow.jsonl"))
    gate = ["compare", "--out", str(tmp_path / "slow"), "--candidate", slow, "--baselines", baselines]
    # Without the noise terms halving beats the 7 % threshold in every cell.
    assert main([*gate, "--k", "0", "--max-spread", "none"]) == REGRESSION
    out = capsys.readouterr().out
    assert "FAIL: 4 gated cell(s) regressed or failed of 4 (4 regressed)" in out
    for cell in CELLS:
        assert f"  {cell}: regressed: throughput -50.0% (threshold ±7.0%)" in out
    assert RunDir(str(tmp_path / "slow")).outcome().label == "regression"
    # With the nightly's defaults halving is judged wherever it is beyond 3 x the cell's spread, however
    # noisy; a cell whose repeats spread so wide that halving is within that is unknown, and a run
    # with no regression but an unknown cell is inconclusive (4), never the pass it used to be.
    records = read_jsonl(run.path("results.jsonl"))
    expected = {}
    for cell in CELLS:
        spread = Samples(tuple(r["throughput_samples_per_s"] for r in records if r["cell_id"] == cell)).spread()
        expected[cell] = "regressed" if 3 * spread < 0.5 else "unknown"
    status = main(gate)
    assert status == (REGRESSION if "regressed" in expected.values() else INCONCLUSIVE)
    with open(tmp_path / "slow" / "compare.csv") as f:
        header, *rows = [line.split(",") for line in f.read().splitlines()]
    assert {row[0]: row[header.index("verdict")] for row in rows} == expected


def test_half_the_throughput_on_a_runner_too_noisy_to_tell_is_inconclusive(tonight, baselines, tmp_path, capsys,
                                                                           monkeypatch):
    """Tonight's run at half the speed, its repeats 30 % apart in every cell (a loaded runner): halving
    is within 3 x 30 %, so no cell can be seen and the run is inconclusive, exit 4, labelled the
    runner's problem."""
    run, _ = tonight
    records = read_jsonl(run.path("results.jsonl"))
    medians = {c: Samples(tuple(r["throughput_samples_per_s"] for r in records if r["cell_id"] == c)).median()
               for c in CELLS}
    slow = str(tmp_path / "slow.jsonl")
    with open(slow, "w") as f:
        for record in records:  # median exactly half tonight's; IQR / median 30 % (0.5x0.7, 0.5x1.0, 0.5x1.3)
            record["throughput_samples_per_s"] = medians[record["cell_id"]] / 2 * (0.7, 1.0, 1.3)[record["repeat"]]
            f.write(json.dumps(record) + "\n")
    out = RunDir(str(tmp_path / "noisy"))
    assert main(["compare", "--out", out.root, "--candidate", slow, "--baselines", baselines]) == INCONCLUSIVE
    printed = capsys.readouterr().out
    assert printed.startswith("nightly comparison: inconclusive: INCONCLUSIVE: the gate could not see 4 gated cell(s)")
    for cell in CELLS:  # the spread is the wider of the two sides': tonight's 30 %, or the baseline's if wider still
        assert re.search(rf"\n  {cell}: unknown: throughput -50\.0% \((tonight's|the baseline's) spread \d+\.\d% above "
                         r"the noise limit of 10\.0%", printed), printed
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert main(["status", "--out", out.root]) == INCONCLUSIVE
    printed = capsys.readouterr().out
    assert printed.startswith("trainkit nightly: inconclusive (exit 4): comparison: INCONCLUSIVE: the gate could not "
                              "see 4")
    assert "::error title=Inconclusive: the gate could not see every cell (not a regression)::" in printed
    assert output.read_text() == "exit_status=4\nlabel=inconclusive\n"
    assert Path(out.path("summary.md")).read_text(encoding="utf-8").startswith(
        "# trainkit nightly: ❔ inconclusive (exit 4)")


def test_a_baseline_of_another_environment_is_no_comparable_baseline(tonight, tmp_path, capsys):
    run, _ = tonight
    root = tmp_path / "baselines"
    elsewhere = root / "cpu-other"
    elsewhere.mkdir(parents=True)
    records = read_jsonl(run.path("results.jsonl"))
    with open(elsewhere / "results.jsonl", "w") as f:
        for record in records:
            record["env"]["torch"] = "0.0.0"
            f.write(json.dumps(record) + "\n")
    (elsewhere / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint(records[0]["env"])}))
    slow = doctored(run, str(tmp_path / "slow.jsonl"))
    out = str(tmp_path / "other")
    assert main(["compare", "--out", out, "--candidate", slow, "--baselines", str(root), "--k", "0"]) == PASS
    printed = capsys.readouterr().out
    assert f"nightly comparison: {NO_BASELINE} for cpu " in printed and "torch 0.0.0" in printed
    assert RunDir(out).outcome().label == NO_BASELINE
    assert not os.path.exists(os.path.join(out, "compare.html"))


def test_promote_refuses_a_red_run(tonight, tmp_path, capsys):
    run, _ = tonight
    red = RunDir(str(tmp_path / "red"))
    shutil.copytree(run.root, red.root)
    slow = doctored(run, red.path("results.jsonl"))
    assert main(["compare", "--out", red.root, "--candidate", slow, "--baselines", str(tmp_path / "none"),
                 "--baseline", run.path("results.jsonl"), "--k", "0", "--max-spread", "none"]) == REGRESSION
    root = str(tmp_path / "baselines")
    assert main(["promote", red.root, "--baselines", root]) == BAD_INPUT
    assert "refusing to promote" in capsys.readouterr().err and load_all(root) == []
    assert main(["promote", red.root, "--baselines", root, "--force"]) == PASS
    assert load_all(root)[0].manifest["forced"] is True


def test_a_gpu_run_on_a_machine_without_one_is_an_infrastructure_failure(tmp_path):
    done = nightly("run", "--out", str(tmp_path / "run"), "--device", "cuda", "--preset", "tiny")
    assert done.returncode == INFRASTRUCTURE, done.stdout + done.stderr
    assert "nightly pre-flight: infrastructure failure: " in done.stdout
    assert "trainkit nightly: infrastructure failure (exit 3): pre-flight: " in done.stdout
    run = RunDir(str(tmp_path / "run"))
    assert list(run.stages()) == ["preflight"] and not run.exists("results.jsonl")  # the matrix never ran


def test_the_gpu_matrix_on_a_cpu_is_bad_input(tmp_path):
    done = nightly("matrix", "--out", str(tmp_path / "run"), "--preset", "nightly", "--repeats", "1")
    assert done.returncode == BAD_INPUT, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("nightly matrix: bad input: no cell of the preset can run here: the nightly preset is the GPU "
            "matrix; on a CPU use --preset tiny, quick or full") in done.stdout
