"""``pipeline.study --slurm`` (pipeline/studies/slurm.py): what is submitted, against a fake ``sbatch``.

The fake sbatch (first on PATH) stands for the cluster: it records each call's argv and environment
and prints an incrementing job id. The real submission runs in tests/slurm (a one-node cluster).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.common.artifacts import StageError
from pipeline.studies import stamp
from pipeline.studies.plan import build_plan
from pipeline.studies.runner import is_done, write_stamp
from pipeline.studies.slurm import CELL_SCRIPT, TRAIN_SCRIPT, submit_plan
from pipeline.studies.spec import parse_spec

FAKE = """#!/bin/sh
# a stand-in for sbatch/scancel: records argv (NUL-separated) and environment, prints a job id
n=$(( $(cat "$FAKE_DIR/count" 2>/dev/null || echo 100) + 1 ))
echo "$n" > "$FAKE_DIR/count"
printf '%s\\0' "$@" > "$FAKE_DIR/$(basename "$0")-$n.argv"
env -0 > "$FAKE_DIR/$(basename "$0")-$n.env"
if [ "$n" = "${FAKE_FAIL_AT:-}" ]; then
    echo "sbatch: error: Batch job submission failed: Invalid account" >&2
    exit 1
fi
echo "$n;semdlmtest"
"""
RAW = {"name": "t", "data": {"preprocessed": "/data/pre", "neighbors": "/data/nn", "seq_len": 32},
       "train": {"steps": 4, "global_batch": 8, "micro_batch": 8},
       "experiments": {"table2": {"kernels": ["mask", "semdlm_plus"], "losses": ["change_aware"]}}}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name in ("sbatch", "scancel"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(calls))
    return calls


def calls_of(calls: Path, tool: str = "sbatch") -> list[tuple[list[str], dict]]:
    out = []
    for f in sorted(calls.glob(f"{tool}-*.argv"), key=lambda p: int(p.stem.split("-")[1])):
        argv = f.read_bytes().decode().split("\0")[:-1]
        env = dict(e.split("=", 1) for e in f.with_suffix(".env").read_bytes().decode().split("\0") if "=" in e)
        out.append((argv, env))
    return out


def plan_of(tmp_path, gpus=0):
    raw = dict(RAW, train=dict(RAW["train"], gpus=gpus))
    return build_plan(parse_spec(raw, source=str(tmp_path / "t.yaml")), tmp_path / "study", python="/venv/python")


def option(argv: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    return values[-1] if values else None


def script_at(argv: list[str]) -> int:
    return next(i for i, a in enumerate(argv) if a in (str(TRAIN_SCRIPT), str(CELL_SCRIPT)))


def test_every_cell_is_one_job_chained_by_its_dependencies(tmp_path, fake, capsys):
    plan = plan_of(tmp_path)
    cells = plan.ordered()
    jobs = submit_plan(plan, cells, "python -m pipeline.study t.yaml --slurm", ["--account=proj", "--mem=4G"])
    submitted = calls_of(fake)
    assert list(jobs) == [c.name for c in cells] + ["report"] and len(submitted) == len(cells) + 1
    assert list(jobs.values()) == [str(n) for n in range(101, 102 + len(cells))]
    out = capsys.readouterr().out.splitlines()
    assert out[1:-1] == [f"{c.name}: job {jobs[c.name]}" for c in cells]
    assert out[-1].startswith(f"report: job {jobs['report']} ")
    for cell, (argv, env) in zip(cells, submitted):
        at = script_at(argv)
        deps = [jobs[d] for d in cell.deps]
        assert option(argv, "--dependency") == (f"afterok:{':'.join(deps)}" if deps else None), cell.name
        assert ("--kill-on-invalid-dep=yes" in argv) == bool(deps)
        assert argv[at - 2:at] == ["--account=proj", "--mem=4G"]  # the user's options last: they win
        assert option(argv, "--output") == str(plan.out / "logs" / (cell.name.replace("/", "__") + ".log"))
        assert (env["STUDY_DIR"], env["STUDY_CELL"]) == (str(plan.out), cell.name)
        if cell.kind == "train":
            assert argv[at:] == [str(TRAIN_SCRIPT)]
            assert [option(argv, o) for o in ("--nodes", "--gpus-per-node", "--ntasks-per-node")] == ["1", "0", "1"]
            assert "--exclusive" not in argv  # runs may share a node (common/shm_registration.py)
            # train.sh's command is the cell's, in its own order
            ours = ["pipeline/train.py", "--ds_config", env["DS_CONFIG"], "--config", env["CONFIG"], "--run-dir",
                    env["RUN_DIR"], "--preprocessed", env["DATA"], *env["EXTRA_ARGS"].split()]
            ours += ["--neighbors", env["NEIGHBORS"]] if env["NEIGHBORS"] else []
            ours += ["--kernel", env["KERNEL"]] if env["KERNEL"] else []
            assert sorted(ours) == sorted(cell.argv[1:]) and env["PYTHON"] == "/venv/python", cell.name
            assert bool(env["NEIGHBORS"]) == (cell.run.kernel == "semdlm_plus")
        else:
            assert argv[at:] == [str(CELL_SCRIPT), *cell.argv]
            assert option(argv, "--gpus-per-node") == "0"
    argv, env = submitted[-1]
    assert option(argv, "--dependency") == f"afterany:{':'.join(jobs[c.name] for c in cells)}"
    assert argv[script_at(argv):] == [str(CELL_SCRIPT), "/venv/python", "-m", "pipeline.study",
                                      str(tmp_path / "t.yaml"), "--out", str(plan.out), "--report-only",
                                      "--python", "/venv/python"]
    assert "STUDY_CELL" not in env  # the report stamps nothing


def test_done_cells_are_left_out_and_a_job_stamps_its_cell(tmp_path, fake):
    plan = plan_of(tmp_path, gpus=4)
    train = plan.cells["train/mask-elbo-s0"]
    train.out.mkdir(parents=True)
    write_stamp(plan.out, train.name, train.key, train.argv, 1.0)
    jobs = submit_plan(plan, plan.ordered(), "cmd", [])
    assert train.name not in jobs and len(jobs) == len(plan.cells)  # every other cell, and the report
    by_cell = {env.get("STUDY_CELL", "report"): argv for argv, env in calls_of(fake)}
    assert option(by_cell["export/mask-elbo-s0"], "--dependency") is None  # its dependency is done
    assert option(by_cell["evaluate/mask-elbo-s0"], "--dependency") == "afterok:" + ":".join(
        [jobs["export/mask-elbo-s0"], jobs["export/ar-s0"]])
    argv = by_cell["train/semdlm_plus-ca-s0"]
    assert [option(argv, o) for o in ("--gpus-per-node", "--ntasks-per-node")] == ["4", "4"]
    assert option(by_cell["evaluate/semdlm_plus-ca-s0"], "--gpus-per-node") == "1"
    assert option(by_cell["export/semdlm_plus-ca-s0"], "--gpus-per-node") == "0"
    # what the export job runs once pipeline.export succeeded: the cell is then cached
    export = plan.cells["export/semdlm_plus-ca-s0"]
    export.out.mkdir(parents=True)
    assert stamp.main([str(plan.out), export.name, "--seconds", "3"]) == 0
    assert is_done(plan, export)


def test_a_failed_sbatch_cancels_what_was_submitted(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_AT", "103")
    plan = plan_of(tmp_path)
    with pytest.raises(StageError, match=r"sbatch of .* failed: sbatch: error: Batch job submission failed: "
                                         r"Invalid account \(cancelled the 2 job\(s\) submitted before it\)"):
        submit_plan(plan, plan.ordered(), "cmd", [])
    (argv, _), = calls_of(fake, "scancel")
    assert argv == ["101", "102"]


def test_no_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    plan = plan_of(tmp_path)
    with pytest.raises(StageError, match="^sbatch not found: run --slurm on a SLURM login node$"):
        submit_plan(plan, plan.ordered(), "cmd", [])
