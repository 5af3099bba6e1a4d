"""The study spec, its plan and its claim tests (pipeline/studies/): validation, cells, keys, verdicts."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import yaml

from pipeline.common.errors import ConfigError
from pipeline.studies import claims
from pipeline.studies.dry_run import print_plan
from pipeline.studies.plan import Run, build_plan, default_loss
from pipeline.studies.runner import is_done, select, write_stamp
from pipeline.studies.spec import load_spec, parse_spec, presets_dir

MINIMAL = {"name": "t", "data": {"preprocessed": "/data/pre", "neighbors": "/data/nn", "seq_len": 32},
           "experiments": {"table2": {"kernels": ["mask", "semdlm_plus"]}}}


def spec_of(**changes):
    raw = json.loads(json.dumps(MINIMAL))
    for key, value in changes.items():
        raw[key] = value
    return parse_spec(raw)


@pytest.mark.parametrize("preset", sorted(p.stem for p in presets_dir().glob("*.yaml")))
def test_every_preset_parses_and_plans(preset, tmp_path):
    spec = load_spec(preset)
    plan = build_plan(spec, tmp_path)
    assert plan.cells and all(c.key for c in plan.ordered())
    names = [c.name for c in plan.ordered()]
    for cell in plan.ordered():  # dependency order: every dependency comes first
        assert all(names.index(d) < names.index(cell.name) for d in cell.deps), cell.name


@pytest.mark.parametrize("raw, message", [
    ({"name": "x"}, "needs name and data"),
    ({**MINIMAL, "extra": 1}, "unknown key(s) extra"),
    ({**MINIMAL, "experiments": {}}, "name at least one"),
    ({**MINIMAL, "experiments": {"table9": {}}}, "unknown experiment 'table9'"),
    ({**MINIMAL, "experiments": {"table2": {"kernels": ["masked"]}}}, "unknown kernel(s) masked"),
    ({**MINIMAL, "experiments": {"table2": {"losses": ["mse"]}}}, "table2.losses"),
    ({**MINIMAL, "experiments": {"table3": {"stepz": [1]}}}, "unknown key(s) stepz"),
    ({**MINIMAL, "train": {"global_batch": 10, "micro_batch": 4}}, "not a multiple"),
    ({**MINIMAL, "data": {"corpus": "a.txt", "preprocessed": "p"}}, "either corpus"),
    ({**MINIMAL, "seeds": []}, "at least one"),
])
def test_bad_specs_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError, match=None) as err:
        parse_spec(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_spec_names_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="smoke"):
        load_spec(tmp_path / "nope.yaml")


def test_table2_runs_mask_under_its_elbo_and_the_others_under_each_loss(tmp_path):
    plan = build_plan(spec_of(seeds=[0, 1]), tmp_path)
    names = {r.name for r in plan.runs["table2"]}
    assert names == {"ar-s0", "ar-s1", "mask-elbo-s0", "mask-elbo-s1", "semdlm_plus-ca-s0", "semdlm_plus-ca-s1",
                     "semdlm_plus-elbo-s0", "semdlm_plus-elbo-s1"}
    train = plan.cells["train/semdlm_plus-ca-s1"]
    assert "--neighbors" in train.argv and "loss=change_aware" in train.argv and "seed=1" in train.argv
    assert "--neighbors" not in plan.cells["train/mask-elbo-s0"].argv  # mask needs no tables
    assert "model_args.causal=true" in plan.cells["train/ar-s0"].argv
    # the judge is the study's own AR model: every diffusion evaluation waits for its export
    assert "export/ar-s0" in plan.cells["evaluate/mask-elbo-s0"].deps


def test_a_changed_setting_changes_exactly_the_cells_it_reaches(tmp_path):
    base = build_plan(spec_of(), tmp_path)
    more_draws = build_plan(spec_of(eval={"t_draws": 16}), tmp_path)
    changed = {n for n, c in base.cells.items() if more_draws.cells[n].key != c.key}
    assert changed == {n for n in base.cells if n.startswith("evaluate/")}
    longer = build_plan(spec_of(train={"steps": 2000}), tmp_path)
    changed = {n for n, c in base.cells.items() if longer.cells[n].key != c.key}
    assert changed == set(base.cells)  # every model retrains, so everything downstream reruns
    shared = build_plan(spec_of(experiments={"table2": {"kernels": ["mask", "semdlm_plus"]},
                                             "table3": {"kernels": ["semdlm_plus"], "steps": [8, 16]}}), tmp_path)
    assert shared.cells["train/semdlm_plus-ca-s0"].key == base.cells["train/semdlm_plus-ca-s0"].key
    assert shared.cells["train/semdlm_plus-ca-s0"].experiments >= {"table2", "table3"}


def test_only_selects_an_experiment_and_what_it_needs(tmp_path):
    spec = spec_of(experiments={"table2": {"kernels": ["mask"]}, "gamma": {"values": [1, 2]}})
    plan = build_plan(spec, tmp_path)
    names = {c.name for c in select(plan, {"gamma"})}
    assert "train/semdlm_plus-ca-k_power2-s0" in names and "evaluate/semdlm_plus-ca-k_power1-s0" in names
    assert "export/ar-s0" in names  # the judge
    assert "train/mask-elbo-s0" not in names


def test_stamps_decide_what_is_cached_and_dry_run_says_so(tmp_path, capsys):
    plan = build_plan(spec_of(), tmp_path)
    cell = plan.cells["train/mask-elbo-s0"]
    assert not is_done(plan, cell)
    cell.out.mkdir(parents=True)
    write_stamp(plan.out, cell.name, cell.key, cell.argv, 1.0)
    assert is_done(plan, cell)
    changed = build_plan(spec_of(train={"lr": 3e-3}), tmp_path)
    assert not is_done(changed, changed.cells["train/mask-elbo-s0"])
    totals = print_plan(plan, plan.ordered(), out=print)
    out = capsys.readouterr().out
    assert "train/mask-elbo-s0" in out and "cached" in out and totals["cached"] == 1


def test_paper_presets_project_gpu_hours(tmp_path, capsys):
    spec = load_spec("lm1b_paper")
    totals = print_plan(build_plan(spec, tmp_path), build_plan(spec, tmp_path).ordered())
    # 200k steps x 512 x 128 tokens x 665 MFLOP/token per model at 8 x A100, MFU 45 %: ~27 GPU hours each
    assert totals["gpu_hours"] > 100
    assert "GPU hours" in capsys.readouterr().out


def test_decide_reads_two_standard_errors():
    assert claims.decide(-0.5, 0.2) == "holds"
    assert claims.decide(0.5, 0.2) == "does not hold"
    assert claims.decide(-0.3, 0.2) == "inconclusive"
    assert claims.decide(float("nan"), 0.1) == "inconclusive"


def test_spearman_of_orderings():
    assert claims.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert claims.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def _write_eval(plan, run: Run, nats: float, stderr: float, where="eval", sweep=(), floor=None):
    d = plan.out / where / run.name
    d.mkdir(parents=True, exist_ok=True)
    nelbo = {"nats_per_token": nats, "stderr": stderr, "bound": "b", "tokens": 100, "candidates": {"b": nats},
             "perplexity": math.exp(nats),
             "unigram": {"train_entropy": 7.0, "nats_per_token": 7.1}}
    if floor is not None:  # as frequency_floor.floor_comparison writes it
        nelbo["unigram"]["frequency_floor"] = {"bound": "b", "nats_per_token": floor, "slack": floor - 7.1,
                                               "margin_nats": floor - nats, "margin_stderr": 0.05}
    (d / "results.json").write_text(json.dumps({"nelbo": nelbo, "sweep": list(sweep)}))


def test_table2_claim_on_written_results(tmp_path):
    plan = build_plan(spec_of(), tmp_path)
    runs = {r.name: r for r in plan.runs["table2"]}
    _write_eval(plan, runs["mask-elbo-s0"], 6.5, 0.05)
    _write_eval(plan, runs["semdlm_plus-ca-s0"], 6.0, 0.05)
    claim = claims.table2_claim(plan)
    assert claim.verdict == "holds" and "-0.500" in claim.evidence
    _write_eval(plan, runs["semdlm_plus-ca-s0"], 6.55, 0.05)
    assert claims.table2_claim(plan).verdict == "inconclusive"
    _write_eval(plan, runs["semdlm_plus-ca-s0"], 7.5, 0.05, floor=8.1)
    claim = claims.table2_claim(plan)
    assert claim.verdict == "does not hold" and "+1.000 nats/token above the unigram" in claim.evidence
    lines = claims.learned_lines(plan)
    assert any("ABOVE" in line and "semdlm_plus" in line and "+0.600 ± 0.050 below that" in line for line in lines)
    from pipeline.studies.report import table2_lines
    table = "\n".join(table2_lines(plan))
    assert "| 8.100 (+1.000) |" in table and table.count("| - |") >= 1  # mask: no floor


def test_penalty_claim_needs_a_collapse_to_hold(tmp_path):
    spec = spec_of(experiments={"penalty": {"lambda_freq": [0, 2], "lambda_sem": [0, 1]}})
    plan = build_plan(spec, tmp_path)
    run = plan.runs["penalty"][0]

    def row(lf, ls, h):
        return {"lambda_freq": lf, "lambda_sem": ls, "entropy_per_sample": [h - 0.01, h + 0.01, h] * 4,
                "entropy_mean": h, "gen_ppl": 10.0, "repetition_rate": 0.1, "steps": 4}
    _write_eval(plan, run, 7.0, 0.1, "penalty", [row(0.0, 0.0, 3.0), row(2.0, 1.0, 4.5)])
    assert claims.penalty_claim(plan, threshold=4.0).verdict == "holds"
    assert claims.penalty_claim(plan, threshold=2.0).verdict == "does not hold"  # no basin to escape


def test_spec_files_in_configs_are_safe_yaml():
    for p in presets_dir().glob("*.yaml"):
        raw = yaml.safe_load(p.read_text())
        assert raw["name"] == p.stem, p
        assert replace(load_spec(p), source=None).name == p.stem


def test_report_sections_of_gamma_sweeps_and_dispersion(tmp_path):
    from pipeline.studies.report import write_study_report

    spec = spec_of(experiments={"gamma": {"values": [1, 2]}, "dispersion": {"kernels": ["uniform", "semdlm", "mask"]},
                                "sweeps": [{"name": "kmax", "kernel": "semdlm_plus", "key": "kernel_args.k_max",
                                            "values": [8, 16]}]})
    plan = build_plan(spec, tmp_path)
    for run in plan.runs["gamma"] + plan.runs["sweep:kmax"]:
        _write_eval(plan, run, 7.0, 0.1, sweep=[{"gen_ppl": 100.0, "entropy_mean": 3.0, "steps": 4}])
    (tmp_path / "diagnose").mkdir()
    rows = ["kernel,t,entropy"] + [f"{k},{t},{h}" for k, hs in (("uniform", (1, 3)), ("semdlm", (1, 2)),
                                                                   ("mask", (1, 1.5))) for t, h in zip((0.1, 0.9), hs)]
    (tmp_path / "diagnose" / "diagnostics.csv").write_text("\n".join(rows) + "\n")
    for run, g in zip(plan.runs["dispersion"], (3.0, 2.0, 1.0)):  # gradient variance in the order of D(Q)
        (tmp_path / "runs" / run.name).mkdir(parents=True)
        (tmp_path / "runs" / run.name / "metrics.jsonl").write_text(
            json.dumps({"step": 2, "gradvar_rel/bucket0": g, "gradvar_rel/bucket1": g}) + "\n")
    report = (write_study_report(plan, "cmd") / "report.md").read_text()
    assert "## Gamma (Figs 1-2)" in report and "| 2 | 0 | 7.000 ± 0.100 |" in report
    assert "## Sweep `kmax`" in report and "| 16 | 0 | 7.000 ± 0.100 |" in report
    assert "## Dispersion" in report and "**holds**" in report  # D(Q) 1, 0.25, 0.0625 ordered like 3, 2, 1
    assert (tmp_path / "report" / "gamma.png").is_file() and (tmp_path / "report" / "dispersion.png").is_file()


def test_a_moved_study_keeps_its_keys(tmp_path):
    a, b = build_plan(spec_of(), tmp_path / "a"), build_plan(spec_of(), tmp_path / "elsewhere" / "b")
    assert {n: c.key for n, c in a.cells.items()} == {n: c.key for n, c in b.cells.items()}


def test_table3_sample_settings_reach_its_models_only(tmp_path):
    spec = spec_of(experiments={"table2": {"kernels": ["mask", "uniform"]},
                                "table3": {"kernels": ["mask"], "steps": [16], "num_samples": 7}})
    plan = build_plan(spec, tmp_path)
    mask, uniform = plan.cells["evaluate/mask-elbo-s0"].argv, plan.cells["evaluate/uniform-ca-s0"].argv
    assert mask[mask.index("--steps") + 1] == "16" and mask[mask.index("--num-samples") + 1] == "7"
    assert uniform[uniform.index("--steps") + 1] == "128" and uniform[uniform.index("--num-samples") + 1] == "32"


def test_convergence_claim_names_the_floors_slack(tmp_path):
    spec = spec_of(experiments={"table2": {"kernels": ["uniform", "semdlm_plus"]},
                                "convergence": {"kernels": ["semdlm_plus", "uniform"]}})
    plan = build_plan(spec, tmp_path)
    runs = {r.kernel: r for r in plan.runs["convergence"]}
    for kernel, curve in (("semdlm_plus", (8.0, 7.5)), ("uniform", (7.6, 7.2))):
        d = tmp_path / "runs" / runs[kernel].name
        d.mkdir(parents=True, exist_ok=True)
        d.joinpath("metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/nelbo": v}) + "\n"
                                                       for s, v in zip((2, 4), curve)))
    claim = claims.convergence_claim(plan)
    assert claim.verdict == "does not hold" and "floors" not in claim.evidence  # no Table 2 results yet
    t2 = {r.kernel: r for r in plan.runs["table2"] if r.kernel and r.loss == default_loss(r.kernel)}
    _write_eval(plan, t2["uniform"], 7.0, 0.05, floor=7.11)
    _write_eval(plan, t2["semdlm_plus"], 7.5, 0.05, floor=7.9)
    claim = claims.convergence_claim(plan)
    assert "+0.800 nats/token above the unigram" in claim.evidence and "+0.010 under uniform" in claim.evidence
    assert "about +0.790 of the difference is the bounds'" in claim.evidence


def test_cpu_projection_counts_each_kernels_own_work(tmp_path):
    """On CPU a semantic kernel's step and bound cost more than the model's FLOPs say (cost.CPU_*_FACTOR);
    on GPU the projection is the model's FLOPs alone."""
    from pipeline.studies.dry_run import cell_seconds

    spec = spec_of(experiments={"table2": {"kernels": ["mask", "semdlm_plus"], "losses": ["change_aware", "elbo"]}})
    plan = build_plan(spec, tmp_path)
    cells = {c.name: c for c in plan.ordered()}
    train = {n.split("/", 1)[1]: cell_seconds(c, 0) for n, c in cells.items() if c.kind == "train"}
    assert train["mask-elbo-s0"] < train["semdlm_plus-ca-s0"] < train["semdlm_plus-elbo-s0"]
    evaluate = {n.split("/", 1)[1]: cell_seconds(c, 0) for n, c in cells.items() if c.kind == "evaluate"}
    assert evaluate["semdlm_plus-ca-s0"] > 5 * evaluate["mask-elbo-s0"] / 1.5
    on_gpu = {cell_seconds(c, 8) for c in cells.values() if c.kind == "train"}
    assert len(on_gpu) == 1  # same model, same steps: the same projection whatever the kernel
