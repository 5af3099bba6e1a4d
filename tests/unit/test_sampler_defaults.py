"""The protocol defaults a sampler config resolves to per kernel (docs/sampling.md)."""
import pytest

from pipeline.common.artifacts import ConfigError
from pipeline.sampling.stage import BLOCKWISE_TOP_P, DEFAULT_PENALTY, SamplerOptions


@pytest.mark.parametrize("kernel,method,penalty", [
    ("mask", "mdlm", (0.0, 0.0)), ("uniform", "ctmc", (0.0, 0.0)),
    ("semdlm", "ctmc", DEFAULT_PENALTY), ("semdlm_softmax", "ctmc", DEFAULT_PENALTY),
    ("semdlm_plus", "ctmc", DEFAULT_PENALTY)])
def test_kernel_defaults(kernel, method, penalty):
    cfg = SamplerOptions().resolve(kernel, 64, 8, None, None)
    assert cfg.method == method and (cfg.penalty.lambda_freq, cfg.penalty.lambda_sem) == penalty
    assert cfg.top_p is None and cfg.penalty.window_side == "left" and cfg.strides == 2
    assert (cfg.hazard, cfg.corrector_steps, cfg.final_argmax) == ("integrated", 1, False)


def test_explicit_values_win_and_blockwise_truncates_its_proposal():
    cfg = SamplerOptions(method="blockwise").resolve("semdlm_plus", 64, 8, 0.0, 0.25)
    assert cfg.top_p == BLOCKWISE_TOP_P and (cfg.penalty.lambda_freq, cfg.penalty.lambda_sem) == (0.0, 0.25)
    assert SamplerOptions(method="blockwise", top_p=1.0).resolve("semdlm_plus", 64, 8, None, None).top_p == 1.0
    assert SamplerOptions(window_side="both").resolve("mask", 64, 8, None, None).penalty.window_side == "both"


@pytest.mark.parametrize("field,value", [("hazard", "euler"), ("window_side", "right"), ("method", "ddim")])
def test_bad_choices_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        SamplerOptions(**{field: value})
