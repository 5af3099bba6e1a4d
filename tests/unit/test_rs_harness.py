"""Reed–Solomon harness: parity checks, exact oracles, exact sampler law, KL, TC/DTC, CLI."""
import json
import math

import pytest
import torch

from pipeline.research.reed_solomon import RSCode, RSOracle, TableOracle, all_configurations, code_distribution
from pipeline.research.rs_harness import (
    closed_form_kl,
    dual_total_correlation,
    exact_kl,
    exact_output_distribution,
    kl_divergence,
    monte_carlo_kl,
    rs_tc_dtc,
    total_correlation,
)
from pipeline.rs_harness import main
from pipeline.sampling.unmasking import SCHEDULES


@pytest.mark.parametrize("q,n,k", [(3, 3, 1), (5, 4, 2), (7, 5, 3)])
def test_codewords_are_exactly_the_parity_check_solutions(q, n, k):
    code = RSCode(q, n, k)
    words = code.codebook()
    assert words.unique(dim=0).shape[0] == q ** k
    assert code.is_codeword(words).all()
    assert ((code.generator_matrix() @ code.parity_check_matrix().T) % q == 0).all()
    # Among all q^n words exactly the q^k codewords pass the parity checks.
    assert int(code.is_codeword(all_configurations(q, n)).sum()) == q ** k


def test_invalid_codes_are_refused():
    for q, n, k in [(6, 4, 2), (5, 6, 2), (5, 3, 4)]:
        with pytest.raises(ValueError):
            RSCode(q, n, k)


def test_algebraic_oracle_matches_brute_force_enumeration():
    code = RSCode(5, 4, 2)
    algebraic, brute = RSOracle(code), TableOracle(code_distribution(code), code.q)
    gen = torch.Generator().manual_seed(0)
    words = code.codebook()[torch.randint(0, 25, (300,), generator=gen)]
    noisy = torch.randint(0, 5, words.shape, generator=gen)
    values = torch.where(torch.rand(words.shape, generator=gen) < 0.3, noisy, words)  # some inconsistent
    revealed = torch.rand(words.shape, generator=gen) < 0.6
    a, b = algebraic.conditionals(values, revealed), brute.conditionals(values, revealed)
    assert torch.allclose(a, b, atol=1e-12)
    assert torch.allclose(a.sum(-1), torch.ones(300, 4, dtype=torch.float64))
    # Fewer than k revealed: uniform marginals on masked positions (MDS).
    few = revealed.sum(1) < code.k
    uniform = torch.full((int((~revealed[few]).sum()), 5), 0.2, dtype=torch.float64)
    assert torch.allclose(a[few][~revealed[few]], uniform)


def test_one_token_per_step_is_exact_for_any_distribution():
    q, n = 3, 4
    probs = torch.rand(q ** n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** 4
    probs /= probs.sum()
    law = exact_output_distribution(TableOracle(probs, q), q, n, (1,) * n)
    assert torch.allclose(law, probs, atol=1e-12)
    code = RSCode(5, 4, 2)
    assert abs(exact_kl(code, "fixed", code.n)) < 1e-12


def test_exact_kl_is_nonnegative_and_matches_closed_form():
    code = RSCode(5, 4, 2)
    data = code_distribution(code)
    for schedule in SCHEDULES:
        for K in range(1, code.n + 1):
            kl = exact_kl(code, schedule, K, data)
            assert kl >= -1e-12
            assert math.isclose(kl, closed_form_kl(code, schedule, K), rel_tol=1e-9, abs_tol=1e-12)
    # One parallel step samples i.i.d. uniform tokens: KL = (n - k) log q.
    assert math.isclose(exact_kl(code, "fixed", 1, data), 2 * math.log(5), rel_tol=1e-12)


def test_sampler_law_is_a_distribution_uniform_on_the_code():
    code = RSCode(5, 4, 2)
    law = exact_output_distribution(RSOracle(code), 5, 4, (1, 3))
    assert math.isclose(float(law.sum()), 1.0, rel_tol=1e-12)
    on_code = law[code_distribution(code) > 0]
    assert torch.allclose(on_code, on_code.mean().expand_as(on_code))
    assert kl_divergence(code_distribution(code), law) > 0.1


def test_monte_carlo_agrees_with_exact():
    code = RSCode(5, 5, 2)
    exact = exact_kl(code, "tc", 3)
    estimate, stderr = monte_carlo_kl(code, "tc", 3, num_samples=6000, seed=1)
    assert 0 < stderr < 0.1
    assert abs(estimate - exact) < 4 * stderr


@pytest.mark.parametrize("q,n,k", [(3, 3, 2), (5, 4, 4), (5, 3, 1)])
def test_tc_and_dtc_of_the_code_match_closed_forms(q, n, k):
    code = RSCode(q, n, k)
    data = code_distribution(code)
    tc, dtc = rs_tc_dtc(code)
    assert math.isclose(total_correlation(data, q, n), tc, abs_tol=1e-9)
    assert math.isclose(dual_total_correlation(data, q, n), dtc, abs_tol=1e-9)


def test_cli_writes_table_plot_and_manifest(tmp_path, capsys):
    out = tmp_path / "rs"
    assert main(["--q", "5", "--n", "4", "--k", "2", "--iterations", "1,2,4", "--mc-samples", "500",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tc | 2 |" in printed
    assert {p.name for p in out.iterdir()} >= {"kl.csv", "summary.md", "kl_vs_K.png", "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "rs_harness" and manifest["stats"]["exact"] is True
    with pytest.raises(SystemExit) as err:
        main(["--q", "6", "--n", "4", "--k", "2", "--out", str(tmp_path / "bad")])
    assert err.value.code == 2


def test_runtime_only_fields_and_equivalent_spellings_do_not_rerun(tmp_path, capsys):
    from pipeline.research.rs_harness import RsHarnessConfig, run_rs_harness

    out = tmp_path / "rs"
    assert main(["--q", "5", "--n", "4", "--k", "2", "--iterations", "1,2", "--out", str(out)]) == 0
    logs = []
    cfg = RsHarnessConfig(q=5, n=4, k=2, iterations=(2, 1), exact_limit=10 ** 6, progress=False)
    run_rs_harness(cfg, out, log=logs.append)
    assert "up to date" in logs[0]
    with pytest.raises(ValueError, match="unknown schedules"):
        RsHarnessConfig(schedules=("fixed", "nope"))
