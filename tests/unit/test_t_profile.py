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
from pipeline.core.posterior import PosteriorConfig, make_reading, posterior_record

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
