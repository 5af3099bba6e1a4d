"""init_from (pipeline/training/init_from.py) on real exports written by the production writer."""
from __future__ import annotations

import pytest
import torch

from pipeline.common.artifacts import ConfigError
from pipeline.common.export_artifact import save_export
from pipeline.core.kernels import KernelConfig
from pipeline.core.model import ModelConfig, build_model
from pipeline.training.init_from import apply_init_weights, load_init_weights

TOKENIZER = {"identity": "vocab-sha256:abc", "name_or_path": "default", "vocab_size": 64}


def _cfg(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny", vocab_size=64, **kw)


def _export(path, cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_export(path, model, cfg, KernelConfig.preset("mask"), TOKENIZER, {}, "diffusion")
    return model


def test_weights_are_copied_exactly_and_non_shape_fields_may_change(tmp_path):
    source = _export(tmp_path / "exp", _cfg())
    target_cfg = _cfg(dropout=0.0, max_seq_len=256)  # not part of the weights: the new run's choice
    torch.manual_seed(1)
    target = build_model(target_cfg)
    init = load_init_weights(tmp_path / "exp", target_cfg, TOKENIZER["identity"])
    apply_init_weights(target, init)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert "export" in init.source and str(tmp_path / "exp") in init.source


def test_an_architecture_or_tokenizer_mismatch_is_refused_with_the_field_named(tmp_path):
    _export(tmp_path / "exp", _cfg())
    with pytest.raises(ConfigError, match="n_layer: 2 there, 3 here"):
        load_init_weights(tmp_path / "exp", _cfg(n_layer=3), TOKENIZER["identity"])
    with pytest.raises(ConfigError, match="vocab_size: 64 there, 65 here"):
        load_init_weights(tmp_path / "exp", ModelConfig.preset("tiny", vocab_size=65), TOKENIZER["identity"])
    with pytest.raises(ConfigError, match="tokenizer .* is not this run's"):
        load_init_weights(tmp_path / "exp", _cfg(), "vocab-sha256:other")


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    init = load_init_weights(_export_dir(tmp_path), _cfg(), TOKENIZER["identity"])
    init.state_dict.pop(next(iter(init.state_dict)))
    with pytest.raises(ConfigError, match="1 missing, 0 unexpected, 0 of another shape"):
        apply_init_weights(build_model(_cfg()), init)


def _export_dir(tmp_path):
    _export(tmp_path / "exp", _cfg())
    return tmp_path / "exp"


def test_a_path_that_is_neither_an_export_nor_a_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an export"):
        load_init_weights(tmp_path, _cfg(), TOKENIZER["identity"])
