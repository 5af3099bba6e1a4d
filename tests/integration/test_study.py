"""``python -m pipeline.study`` end to end: the `smoke` preset on the suite's tiny data artifacts.

Real stage commands (DeepSpeed training, export, evaluate with the study's own AR judge), the report
with every claim line, and the cache: a rerun runs nothing, a changed setting reruns only the cells it
reaches.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(900)


def smoke_spec(path: Path, preprocessed: Path, neighbors: Path, **eval_changes) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "study" / "smoke.yaml").read_text())
    raw["data"] = {"preprocessed": str(preprocessed), "neighbors": str(neighbors), "seq_len": 32}
    raw["eval"].update(split="validation", **eval_changes)  # the suite's artifact has no test split
    path.write_text(yaml.safe_dump(raw))
    return path


def study(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.study", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=800)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, preprocessed, neighbors):
    root = tmp_path_factory.mktemp("study")
    spec = smoke_spec(root / "smoke.yaml", preprocessed, neighbors)
    proc = study(spec, "--out", root / "out", "--jobs", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, spec, proc


def test_smoke_study_writes_every_table_figure_and_claim(smoke):
    root, _, proc = smoke
    report = (root / "out" / "report" / "report.md").read_text()
    assert "## Does every model learn?" in report  # evaluate's unigram reference reached the report
    for claim in ("(table2)", "(table3)", "(penalty)", "(convergence)"):
        assert claim in report, claim
    assert report.count("**holds**") + report.count("**does not hold**") + report.count("**inconclusive**") == 4
    for model in ("AR (same budget)", "mask (elbo)", "semdlm_plus (change_aware)"):
        assert f"| {model} |" in report
    results = json.loads((root / "out" / "report" / "results.json").read_text())
    assert {r["kernel"] for r in results["table2"]} == {None, "mask", "semdlm_plus"}
    assert set(results["table3"]) == {"mask", "semdlm_plus"}
    assert all(set(steps) == {"2", "4"} for steps in results["table3"].values())
    for figure in ("convergence.png", "table3_steps.png", "penalty.png"):
        assert (root / "out" / "report" / figure).stat().st_size > 1000
    # every evaluation was judged by the study's own AR export
    evaluation = json.loads((root / "out" / "eval" / "semdlm_plus-ca-s0" / "results.json").read_text())
    assert evaluation["judge"].endswith("exports/ar-s0")
    # ... and shows the training curve of the run it was exported from
    curve = evaluation["training_curve"]
    assert curve["run"].endswith("runs/semdlm_plus-ca-s0") and curve["val"] and curve["train_loss"]
    assert "learning_curve.png" in evaluation["plots"]
    assert "## Training" in (root / "out" / "eval" / "semdlm_plus-ca-s0" / "report.md").read_text()


def test_a_rerun_runs_nothing_and_a_changed_setting_only_what_it_reaches(smoke, tmp_path):
    root, spec, _ = smoke
    again = study(spec, "--out", root / "out")
    assert again.returncode == 0 and "10 cells, 10 already done, 0 to run" in again.stdout, again.stdout
    dry = study(spec, "--out", root / "out", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("cached") == 10
    changed = smoke_spec(tmp_path / "more_draws.yaml", *_data(spec), t_draws=3)
    rerun = study(changed, "--out", root / "out", "--only", "table2")
    # table2's cells: 3 trainings, 3 exports, 3 evaluations; only the evaluations read t_draws
    assert rerun.returncode == 0 and "9 cells, 6 already done, 3 to run" in rerun.stdout, rerun.stdout
    assert json.loads((root / "out" / "eval" / "mask-elbo-s0" / "results.json").read_text())["nelbo"]["t_draws"] == 3


def _data(spec: Path) -> tuple[Path, Path]:
    data = yaml.safe_load(spec.read_text())["data"]
    return Path(data["preprocessed"]), Path(data["neighbors"])


def test_bad_spec_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {corpus: a.txt}\nexperiments: {table9: {}}\n")
    proc = study(bad, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "python -m pipeline.study: error: experiments: unknown experiment 'table9' (known: table2, table3, gamma, "
        "penalty, dispersion, convergence, sweeps)"]
    assert not (tmp_path / "out").exists()


def test_a_killed_study_resumes(tmp_path, preprocessed, neighbors):
    """SIGTERM while a training cell runs: the cell is stopped (no stamp, its lock released), the rerun
    trains it again (resuming its checkpoint) and finishes the selection."""
    import os
    import signal
    import time

    spec = smoke_spec(tmp_path / "smoke.yaml", preprocessed, neighbors)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.study", str(spec), "--out", str(out), "--only",
                             "convergence"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "logs" / "train__mask-elbo-s0.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "step 1:" in log.read_text()):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output
    assert not (out / ".study" / "cells" / "train__mask-elbo-s0.json").exists()
    assert not (out / "runs" / "mask-elbo-s0" / ".lock").exists()
    again = study(spec, "--out", out, "--only", "convergence")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "done train/mask-elbo-s0" in again.stdout
    assert (out / ".study" / "cells" / "train__mask-elbo-s0.json").is_file()
