"""Smoke tests of the sampler benchmarks in their ``--quick`` form (tiny model, a few steps)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # bench/ is not an installed package

from bench import mdlm_cache, sampler  # noqa: E402


def test_sampler_bench_quick_prints_the_ctmc_share_last(capsys):
    assert sampler.main(["--quick", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ctmc_outside_share=\d\.\d{3}", lines[-1])
    assert 0.0 <= float(lines[-1].split("=")[1]) <= 1.0
    rows = {line.split()[0] for line in lines if re.match(r"\w+ +(semdlm_plus|mask) ", line)}
    assert rows == set(sampler.SAMPLERS)


def test_mdlm_cache_bench_quick_is_exact(capsys):
    assert mdlm_cache.main(["--quick", "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "cache_exact=yes"
