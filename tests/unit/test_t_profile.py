"""python -m pipeline.t_profile on a real export and a real MDS split."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from pipeline import t_profile
from pipeline.common.export_artifact import save_export
from pipeline.core.kernels import KernelConfig
from pipeline.core.model import ModelConfig, build_model
from pipeline.core.posterior import PosteriorConfig, Reading, make_reading, posterior_record

V, L = 64, 12
TOKENIZER = {"identity": "vocab-sha256:abc", "name_or_path": "default", "vocab_size": V,
             "special_ids": {"pad": 0, "mask": 63}}


@pytest.fixture()
def setup(tmp_path):
    from streaming import MDSWriter

    with MDSWriter(out=str(tmp_path / "test"), columns={"tokens": f"ndarray:int32:{L}"}) as w:
        rng = np.random.default_rng(0)
        for i in range(6):
            x = np.zeros(L, np.int32)
            x[: 6 + i] = rng.integers(1, 60, 6 + i)
            w.write({"tokens": x})
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", vocab_size=V)
    support = np.ones(V, dtype=bool)
    support[[0, 63]] = False
    reading = make_reading(PosteriorConfig(), "uniform", "change_aware", 1.0, 0.1)
    save_export(tmp_path / "kernel", build_model(cfg), cfg, KernelConfig.preset("uniform"), TOKENIZER, {}, "diffusion",
                posterior=posterior_record(PosteriorConfig(), reading, support))
    ar_cfg = ModelConfig.preset("tiny", vocab_size=V, causal=True)
    save_export(tmp_path / "ar", build_model(ar_cfg), ar_cfg, None, TOKENIZER, {}, "ar")
    return tmp_path


def test_profile_prints_each_t_and_writes_json(setup, capsys):
    out = setup / "profile.json"
    assert t_profile.main(["--model", str(setup / "kernel"), "--split", str(setup / "test"), "--sequences", "4",
                           "--t", "0.001,0.5", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"t=0\.001:\S+ t=0\.5:\S+", lines[-1]), lines[-1]
    assert "uncorrected mean" in lines[1]  # a corrected model also gets the uncorrected column
    profiles = json.loads(out.read_text())["profiles"]
    assert set(profiles) == {"as read", "uncorrected"}
    first = profiles["as read"][0]
    assert first["tokens"] == 6 + 7 + 8 + 9 and math.isfinite(first["mean"]) and first["max"] >= first["median"]


def test_profile_refuses_an_ar_export_and_bad_times(setup, capsys):
    for argv in (["--model", str(setup / "ar"), "--split", str(setup / "test")],
                 ["--model", str(setup / "kernel"), "--split", str(setup / "test"), "--t", "0,1.5"]):
        with pytest.raises(SystemExit) as exc:
            t_profile.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("python -m pipeline.t_profile: error:") and "\n" not in err


def test_profile_refuses_the_resampled_bound_where_it_does_not_apply(setup, capsys):
    with pytest.raises(SystemExit) as exc:
        t_profile.main(["--model", str(setup / "kernel"), "--split", str(setup / "test"), "--bound", "resampled"])
    assert exc.value.code == 2
    assert "resampling chain's bound needs" in capsys.readouterr().err


def test_the_resampled_profile_is_the_dense_integrand(one_torch_thread):
    """--bound auto on a kernel-aware SemDLM+ profiles the resampling chain's integrand: checked against the dense
    reference (pipeline/research/realisation.py) at each t, and against ctelbo where the two must differ."""
    from pipeline.research import bound_check as bc
    from pipeline.research import realisation
    from pipeline.research.t_profile import integrand_profile, profile_bound

    toy = bc.build_toy("semdlm_plus", vocab=12, k_max=5, valid=10, seed=0)
    kernel, reading = toy.kernel, Reading(True)
    assert profile_bound(kernel, reading) == "resampled" and profile_bound(kernel, Reading(False)) == "ctelbo"
    table = 1.5 * torch.randn(12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table[:, 0] = -math.inf  # [MASK] is never clean

    def model(xt, t):  # clean-token scores that depend on the noisy token only
        return table[xt]

    seqs = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (6, 5), generator=torch.Generator().manual_seed(2))]
    times = (0.3, 0.9)
    prof = integrand_profile(model, kernel, seqs, None, times, reading, batch_size=6, bound="auto")
    flux = integrand_profile(model, kernel, seqs, None, times, reading, batch_size=6, bound="ctelbo")
    for row, row_flux, t in zip(prof, flux, times):
        t = float(torch.tensor(t, dtype=torch.float32))  # the profile's t is float32, as the model's input
        xt, _ = kernel.sample_xt(seqs, torch.full((6,), t), generator=torch.Generator().manual_seed(0))
        dense = realisation.integrand(kernel, torch.softmax(table[xt.flatten()], -1), seqs.flatten(), xt.flatten(),
                                      t, realisation.resample_rate(kernel, t))
        assert row["tokens"] == 30 and abs(row["mean"] - float(dense.mean())) < 1e-9, (row, float(dense.mean()))
        assert abs(row["mean"] - row_flux["mean"]) > 1e-3
