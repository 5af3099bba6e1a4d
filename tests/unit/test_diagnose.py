"""Kernel diagnostics: closed forms, exact sparse path vs dense brute force, Monte Carlo, CLI."""
import json
import math

import pytest
import torch

from pipeline.common.neighbor_artifact import NeighborTables
from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.diagnose import main
from pipeline.research.diagnose import (
    DiagnoseConfig,
    diagnose,
    exact_expected_metrics,
    kernel_dispersion,
    monte_carlo_expected_metrics,
    posterior_eq57,
    posterior_metrics,
)

from neighbor_tables import write_neighbor_artifact

V, K, MASK = 14, 5, 3


def small_tables(seed=0):
    """A random vocabulary: tokens 0 and MASK are specials, rows hold K distinct valid neighbours."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(V, dtype=torch.bool)
    valid[[0, MASK]] = False
    rows = []
    for i in range(V):
        perm = [x for x in torch.randperm(V, generator=g).tolist() if x != i and valid[x]]
        rows.append(perm[:K])
    prior = torch.rand(V, generator=g, dtype=torch.float64) * valid
    sims = torch.rand(V, K, generator=g).sort(dim=1, descending=True).values
    return {"neighbors": torch.tensor(rows), "valid_vocab": valid, "unigram_prior": prior / prior.sum(),
            "similarities": sims}


def kernel(name, tables, **overrides):
    cfg = KernelConfig.preset(name, **({"k_max": 4} if name in ("semdlm", "semdlm_softmax") else {}), **overrides)
    return build_kernel(cfg, V, mask_id=MASK, **tables)


def brute_force(ker, prior, t, eps):
    """Dense kernel matrix, Eq 57 column by column, metrics averaged over the xt marginal."""
    joint = prior[:, None] * ker.marginal_rows(torch.arange(V), t)  # [x0, xt]
    marginal = joint.sum(0)
    live = marginal > 0
    metrics = posterior_metrics((joint / marginal.clamp_min(1e-300)).T[live], eps)
    return {k: float((marginal[live] * v).sum()) for k, v in metrics.items()}


def test_mask_posterior_is_a_point_mass_on_a_visible_token_and_the_prior_on_mask():
    tables = small_tables()
    ker, prior = kernel("mask", tables), tables["unigram_prior"]
    visible = posterior_eq57(prior, ker.likelihood_of(torch.tensor(5), 0.4))
    assert torch.equal(visible, torch.nn.functional.one_hot(torch.tensor(5), V).to(visible.dtype))
    masked = posterior_eq57(prior, ker.likelihood_of(torch.tensor(MASK), 0.4))
    assert torch.allclose(masked, prior)


@pytest.mark.parametrize("t", [0.2, 0.7])
def test_closed_forms_of_mask_and_uniform(t):
    tables = small_tables()
    prior = tables["unigram_prior"]
    support = int((prior > 0).sum())
    mask = exact_expected_metrics(kernel("mask", tables), prior, t, eps=1e-3)
    alpha = float(kernel("mask", tables).alpha(t))
    assert math.isclose(mask["d_act"], (1 - alpha) * (support - 1), rel_tol=1e-12)  # Eq 59
    assert math.isclose(mask["I1"], (1 - alpha) * (1 - float((prior ** 2).sum())), rel_tol=1e-12)
    uni = exact_expected_metrics(kernel("uniform", tables), prior, t, eps=1e-3)
    assert math.isclose(uni["d_act"], support - 1, rel_tol=1e-12)  # Eq 60
    assert mask["I1"] <= uni["I1"]  # Eq 61


@pytest.mark.parametrize("name", ["semdlm", "semdlm_plus", "semdlm_softmax", "uniform"])
def test_exact_sparse_path_matches_dense_brute_force(name):
    tables = small_tables(seed=1)
    ker = kernel(name, tables, **({"k_max": 8} if name == "semdlm_plus" else {}))
    for t in (0.15, 0.5, 0.85):
        exact = exact_expected_metrics(ker, tables["unigram_prior"], t, eps=0.02, chunk=3)
        ref = brute_force(ker, tables["unigram_prior"], t, eps=0.02)
        for metric, value in ref.items():
            assert math.isclose(exact[metric], value, rel_tol=1e-9, abs_tol=1e-12), (name, t, metric)


def test_monte_carlo_agrees_with_exact():
    tables = small_tables(seed=2)
    ker, prior = kernel("semdlm_plus", tables), tables["unigram_prior"]
    exact = exact_expected_metrics(ker, prior, 0.6, eps=0.02)
    mc = monte_carlo_expected_metrics(ker, prior, 0.6, 0.02, 4000, torch.Generator().manual_seed(0))
    assert mc["entropy"][1] > 0 and mc["I1"][1] > 0
    for metric, (mean, se) in mc.items():  # d_act is constant (|S| - 1) for semdlm_plus: se = 0
        assert abs(mean - exact[metric]) < 4.5 * se + 1e-12, (metric, mean, exact[metric], se)


def test_dispersion_and_config_validation():
    assert kernel_dispersion(torch.full((7,), 2.5, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-15)
    assert kernel_dispersion(torch.tensor([0.0, 2.0], dtype=torch.float64)) == pytest.approx(1.0)
    for bad in ({"kernels": ("gauss",)}, {"num_t": 1}, {"eps": 0.0}, {"method": "grid"}):
        with pytest.raises(ValueError):
            DiagnoseConfig(**bad)


def test_duplicate_neighbours_are_refused():
    tables = small_tables()
    tables["neighbors"][:, 1] = tables["neighbors"][:, 0]
    with pytest.raises(ValueError, match="distinct"):
        exact_expected_metrics(kernel("semdlm", tables), tables["unigram_prior"], 0.5, eps=1e-3)


def test_summary_states_the_ordering():
    tables = small_tables()
    nb = NeighborTables(**tables, assoc_indices=None, assoc_weights=None, manifest={})  # S+ is not used
    rows, summary = diagnose(nb, MASK, DiagnoseConfig(num_t=4), progress=False)
    assert len(rows) == 16
    assert set(summary["ordering"]) == {f"{s}:{m}" for s in ("semdlm", "semdlm_plus")
                                        for m in ("d_act", "d_act_eps", "I1")}
    d = summary["kernels"]
    assert d["uniform"]["mean_d_act"] >= d["semdlm"]["mean_d_act"]


def test_cli_on_a_neighbour_artifact(tmp_path, capsys):
    tables = small_tables()
    nb_dir = tmp_path / "nb"
    write_neighbor_artifact(nb_dir, tables)
    out = tmp_path / "diag"
    args = ["--neighbors", str(nb_dir), "--mask-id", str(MASK), "--num-t", "3", "--out", str(out)]
    assert main(args) == 0
    assert "Eq 17 ordering" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"diagnostics.csv", "diagnostics.png", "summary.md", "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "diagnose" and "neighbor_index" in manifest["upstream"]
    assert main(args) == 0 and "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["--neighbors", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert err.value.code == 2


def test_runtime_only_fields_do_not_rerun(tmp_path):
    from pipeline.research.diagnose import run_diagnose

    write_neighbor_artifact(tmp_path / "nb", small_tables())
    logs = []
    cfg = DiagnoseConfig(num_t=3, mask_id=MASK, chunk=4, progress=False)
    run_diagnose(cfg, tmp_path / "nb", tmp_path / "diag", log=logs.append)
    assert not any("up to date" in line for line in logs)
    logs.clear()
    run_diagnose(DiagnoseConfig(num_t=3, mask_id=MASK), tmp_path / "nb", tmp_path / "diag", log=logs.append)
    assert "up to date" in logs[0]  # chunk and progress change the speed, not the numbers
    run_diagnose(DiagnoseConfig(num_t=4, mask_id=MASK, progress=False), tmp_path / "nb", tmp_path / "diag",
                 log=logs.append)
    assert "up to date" not in logs[-1]
