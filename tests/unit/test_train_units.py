"""Fast checks of the training stage's parts (no DeepSpeed launch): config, DeepSpeed JSON patching,
LR schedule, loss weights, resume refusal, EMA, the gradient-variance probe, export round trip."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.model import ModelConfig, build_model
from pipeline.core.objectives import mdlm_time_weights
from pipeline.training.checkpoint import check_identity, rng_state, set_rng_state
from pipeline.training.config import TrainConfig, load_config, parse_overrides
from pipeline.training.ds_config import CPU_REDUCE_BUCKET, load_ds_config, patch_ds_config, resolve_precision
from pipeline.training.ema import EMA
from pipeline.training.loop import lr_multiplier, noise_seed
from pipeline.training.metrics import gradient_variance_probe, model_flops_utilization

from neighbor_tables import shifted_tables, write_neighbor_artifact

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- config
def test_presets_load_with_paper_hyperparameters():
    for name, seq_len in (("lm1b_small", 128), ("owt_small", 1024)):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert (cfg.model, cfg.seq_len, cfg.global_batch, cfg.lr, cfg.warmup_steps, cfg.ema_decay,
                cfg.max_steps) == ("small", seq_len, 512, 3e-4, 2500, 0.9999, 200_000)
        assert cfg.accum_steps(8) * cfg.micro_batch * 8 == 512
    assert load_config(REPO / "configs" / "tiny.yaml").model == "tiny"


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["a=1", "model_args.n_layer=4", "b=[1, 2]"]) == {"a": 1, "model_args": {"n_layer": 4},
                                                                             "b": [1, 2]}
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["lr=3e-4", "model_args.n_layer=3", "kernel=uniform"],
                      max_steps=7)
    assert cfg.lr == 3e-4 and cfg.model_config(100).n_layer == 3 and cfg.kernel == "uniform" and cfg.max_steps == 7


@pytest.mark.parametrize("override, message", [
    ("lr=fast", "lr must be of type float"),
    ("no_such_key=1", "unknown TrainConfig keys ['no_such_key']"),
    ("micro_batch=5", "not a multiple of micro_batch=5"),
    ("kernel_args.k_maxx=3", "unknown kernel_args ['k_maxx']"),
    ("model_args.n_head=5", "not divisible by n_head=5"),
    ("loss=mse", "loss must be one of"),
    ("head_init=normal", "head_init must be one of"),
    ("elbo_chain=markov", "elbo_chain must be one of"),
    ("elbo_chain=resampling", "elbo_chain=resampling trains the resampling chain's bound: it needs loss=elbo"),
    ("notakeyvalue", "not of the form key=value"),
])
def test_bad_config_values_fail_with_the_key_named(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(REPO / "configs" / "tiny.yaml", [override])


def test_accumulation_follows_world_size():
    cfg = TrainConfig(global_batch=512, micro_batch=16)
    assert [cfg.accum_steps(w) for w in (1, 8, 32)] == [32, 4, 1]
    with pytest.raises(ValueError, match="not divisible"):
        cfg.accum_steps(64)


# --------------------------------------------------------------------------- DeepSpeed JSON
@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero2_offload"])
def test_ds_configs_are_patched_consistently(name):
    raw = load_ds_config(REPO / "ds_configs" / f"{name}.json")
    assert "gradient_clipping" in raw
    cfg = TrainConfig(global_batch=64, micro_batch=4, grad_clip=0.5)
    cpu = patch_ds_config(raw, cfg, world_size=2, cuda_available=False)
    assert (cpu["train_batch_size"], cpu["train_micro_batch_size_per_gpu"], cpu["gradient_accumulation_steps"]) == \
        (64, 4, 8)
    assert cpu["gradient_clipping"] == 0.5 and not cpu["torch_autocast"]["enabled"] and not cpu["bf16"]["enabled"]
    assert "offload_optimizer" not in cpu["zero_optimization"] and "optimizer" not in cpu
    gpu = patch_ds_config(raw, cfg, world_size=8, cuda_available=True)
    assert gpu["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and gpu["gradient_accumulation_steps"] == 2
    assert ("optimizer" in gpu) == (name == "zero2_offload")
    # CPU: small gradient buckets (DeepSpeed reallocates them every backward); GPU: the JSON's
    stage = raw["zero_optimization"]["stage"]
    assert gpu["zero_optimization"]["reduce_bucket_size"] == raw["zero_optimization"]["reduce_bucket_size"]
    expected = CPU_REDUCE_BUCKET if stage in (1, 2) else raw["zero_optimization"]["reduce_bucket_size"]
    assert cpu["zero_optimization"]["reduce_bucket_size"] == expected


def test_precision_resolution():
    assert resolve_precision("auto", False) == "fp32" and resolve_precision("auto", True) == "bf16"
    assert resolve_precision("bf16", False) == "bf16" and resolve_precision("fp32", True) == "fp32"


def test_ds_config_without_clipping_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="gradient_clipping"):
        load_ds_config(path)


# --------------------------------------------------------------------------- schedule, loss weights, seeds
def test_lr_warmup_then_constant_or_cosine():
    cfg = TrainConfig(warmup_steps=10, max_steps=110, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, cfg) == pytest.approx(0.1) and lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg) == pytest.approx(1.0) and lr_multiplier(60, cfg) == pytest.approx(0.55)
    assert lr_multiplier(110, cfg) == pytest.approx(0.1)
    const = TrainConfig(warmup_steps=10, max_steps=110)
    assert lr_multiplier(100, const) == 1.0


def test_nelbo_weights_of_the_mask_kernel_are_one_over_t():
    kernel = build_kernel(KernelConfig.preset("mask"), 16, mask_id=3)
    t = torch.tensor([0.1, 0.5, 0.9])
    changed = torch.tensor([[True, False], [True, True], [False, True]])
    real = torch.tensor([[True, True], [True, False], [True, True]])
    w = mdlm_time_weights(kernel, t, changed, real)  # alpha_t = 1 - t: -alpha'/(1 - alpha) = 1/t
    expected = (1.0 / t)[:, None] * (changed & real)
    assert torch.allclose(w, expected.float(), rtol=1e-5)


def test_noise_seeds_are_distinct_over_steps_ranks_and_micro_steps():
    seeds = {noise_seed(0, s, r, a, 4, 3) for s in range(50) for r in range(4) for a in range(3)}
    assert len(seeds) == 50 * 4 * 3


# --------------------------------------------------------------------------- resume helpers
def test_changed_identity_is_refused_with_the_difference_named():
    saved = {"model": {"n_layer": 2, "d_model": 64}, "kernel": {"name": "mask"}, "loss": "change_aware"}
    check_identity(saved, json.loads(json.dumps(saved)), "run")
    with pytest.raises(ValueError, match=r"model.n_layer: 2 -> 4"):
        check_identity(saved, {**saved, "model": {"n_layer": 4, "d_model": 64}}, "run")
    with pytest.raises(ValueError, match=r"loss: 'change_aware' -> 'elbo'"):
        check_identity(saved, {**saved, "loss": "elbo"}, "run")


def test_execution_options_do_not_change_the_checkpoint_identity():
    """Activation checkpointing and torch.compile change how a step is computed, not what: resumable."""
    base = TrainConfig().identity(30522, 128, "vocab-sha256:x")
    other = TrainConfig(model_args={"activation_checkpointing": True}, compile=True).identity(30522, 128,
                                                                                               "vocab-sha256:x")
    check_identity(base, other, "run")
    assert base == other and "activation_checkpointing" not in base["model"]
    changed = TrainConfig(model_args={"n_layer": 3}).identity(30522, 128, "vocab-sha256:x")
    with pytest.raises(ValueError, match="n_layer: 2 -> 3"):
        check_identity(base, changed, "run")


def test_rng_state_round_trip_is_exact_and_weights_only_loadable(tmp_path):
    import random

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


def test_ema_tracks_the_weights():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for shadow, p0 in zip(ema.shadow, start):
        assert torch.allclose(shadow, p0 + 0.5)
    other = EMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))


# --------------------------------------------------------------------------- metrics
def test_mfu_formula():
    assert model_flops_utilization(1e5, 1e9, 1e15, 2) == pytest.approx(0.05)


def test_gradient_variance_probe_is_positive_and_leaves_grads_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))

    def loss_fn(x0, t, gen):  # noise grows with t, so higher buckets have larger gradient variance
        noisy = torch.where(torch.rand(x0.shape, generator=gen) < t[:, None],
                            torch.randint(0, 10, x0.shape, generator=gen), x0)
        return torch.nn.functional.cross_entropy(model(noisy).reshape(-1, 10), x0.reshape(-1))

    x0 = [torch.randint(0, 10, (4, 6), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    out = gradient_variance_probe(model, loss_fn, x0, num_buckets=2, samples=6, seed=1, t_min=1e-3)
    assert set(out) == {"gradvar/bucket0", "gradvar/bucket1", "gradvar_rel/bucket0", "gradvar_rel/bucket1"}
    assert all(v > 0 and math.isfinite(v) for v in out.values())
    assert all(p.grad is None for p in model.parameters())
    again = gradient_variance_probe(model, loss_fn, x0, num_buckets=2, samples=6, seed=1, t_min=1e-3)
    assert again == out


# --------------------------------------------------------------------------- export
def test_export_round_trip_with_a_neighbour_kernel(tmp_path):
    from pipeline.common.export_artifact import load_export, save_export

    V, K = 40, 4
    tokenizer = {"identity": "vocab-sha256:test", "special_ids": {"mask": 3, "pad": 0}, "vocab_size": V}
    nn_dir = write_neighbor_artifact(tmp_path / "nn", shifted_tables(np.ones(V, dtype=bool), K, (0.9, 0.6)),
                                     config={"test": 1}, tokenizer=tokenizer)
    model_cfg = ModelConfig.preset("tiny", vocab_size=V)
    torch.manual_seed(0)
    model = build_model(model_cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    kernel_cfg = KernelConfig.preset("semdlm_plus", k_max=K)
    out = save_export(tmp_path / "export", model, model_cfg, kernel_cfg, tokenizer,
                      {"preprocessed": None, "neighbors": str(nn_dir)}, "diffusion")
    with pytest.raises(FileExistsError):
        save_export(out, model, model_cfg, kernel_cfg, tokenizer, {"neighbors": str(nn_dir)}, "diffusion")
    loaded = load_export(out)
    assert loaded.kind == "diffusion" and loaded.mask_id == 3 and loaded.config["artifacts"]["neighbors"]
    x, t = torch.randint(0, V, (2, 8)), torch.rand(2)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), model(x, t))
    a = loaded.kernel.sample_xt(x, t, generator=torch.Generator().manual_seed(5))[0]
    from pipeline.common.neighbor_artifact import load_neighbor_tables
    from pipeline.core.kernels import make_kernel

    direct = make_kernel(kernel_cfg, V, 3, load_neighbor_tables(nn_dir))
    assert torch.equal(a, direct.sample_xt(x, t, generator=torch.Generator().manual_seed(5))[0])


# --------------------------------------------------------------------------- upstream artifacts
def _fake_preprocessed(directory: Path, identity: str, splits=("train", "validation")) -> Path:
    from pipeline.common.artifacts import StageRun

    tokenizer = {"identity": identity, "special_ids": {"mask": 3, "pad": 0}, "vocab_size": 40}
    run = StageRun("preprocess", directory, config={"test": True}, tokenizer=tokenizer)
    run.extra.update(splits=list(splits), seq_len=16)
    with run as tmp:
        (tmp / "stats.json").write_text("{}")
    return directory


def _fake_neighbors(directory: Path, identity: str, V: int = 40, K: int = 4) -> Path:
    return write_neighbor_artifact(directory, shifted_tables(np.ones(V, dtype=bool), K, np.ones(K)),
                                   tokenizer={"identity": identity})


def test_upstream_artifacts_are_validated_against_each_other(tmp_path):
    from pipeline.common.artifacts import ArtifactError
    from pipeline.training.components import load_upstream

    pre = _fake_preprocessed(tmp_path / "pre", "vocab-sha256:a")
    plus = KernelConfig.preset("semdlm_plus", k_max=4)
    up = load_upstream(pre, _fake_neighbors(tmp_path / "nn", "vocab-sha256:a"), plus)
    assert (up.vocab_size, up.seq_len, up.mask_id, up.pad_id) == (40, 16, 3, 0)
    assert up.references()["neighbors_manifest_sha256"]
    assert load_upstream(pre, None, KernelConfig.preset("mask")).tables is None
    with pytest.raises(ValueError, match="needs a neighbour table"):
        load_upstream(pre, None, plus)
    with pytest.raises(ArtifactError, match="tokenizer identity"):
        load_upstream(pre, _fake_neighbors(tmp_path / "nn_other", "vocab-sha256:b"), plus)
    with pytest.raises(ArtifactError, match=r"split\(s\) \['validation'\] missing"):
        load_upstream(_fake_preprocessed(tmp_path / "pre_train_only", "vocab-sha256:a", ("train",)), None,
                      KernelConfig.preset("mask"))
    with pytest.raises(ArtifactError, match="expected a 'neighbor_index' artifact"):
        load_upstream(pre, pre, plus)


def test_reading_options_are_validated_and_part_of_the_identity():
    from pipeline.common.artifacts import ConfigError
    from pipeline.training.config import TrainConfig

    with pytest.raises(ConfigError, match="lambda_same > 0"):
        TrainConfig(kernel="semdlm_plus", lambda_same=0.0)  # change_aware + the correction: refused, one line
    TrainConfig(kernel="semdlm_plus", lambda_same=0.0, change_correction=False)
    TrainConfig(kernel="mask", lambda_same=0.0)  # mask is read as SUBS: no correction to make
    with pytest.raises(ConfigError, match="parameterization"):
        TrainConfig(parameterization="subs")
    with pytest.raises(ConfigError, match="clean_support"):
        TrainConfig(clean_support="seen")
    a = TrainConfig(kernel="uniform").identity(64, 32, "x")
    b = TrainConfig(kernel="uniform", parameterization="direct").identity(64, 32, "x")
    assert a["posterior"]["parameterization"] == "kernel" and a != b


def test_a_run_from_before_the_reading_record_resumes_only_as_it_was_read():
    from pipeline.training.checkpoint import check_identity
    from pipeline.training.config import TrainConfig

    old = TrainConfig(kernel="uniform").identity(64, 32, "x")
    del old["posterior"]  # a checkpoint written before the record
    legacy = TrainConfig(kernel="uniform", parameterization="direct", clean_support="all", change_correction=False)
    check_identity(old, legacy.identity(64, 32, "x"), "runs/old")
    with pytest.raises(ValueError, match="posterior.parameterization: 'direct' -> 'kernel'"):
        check_identity(old, TrainConfig(kernel="uniform").identity(64, 32, "x"), "runs/old")


def test_the_unigram_prior_comes_from_the_artifacts_counts_or_one_line(tmp_path):
    """head_init=unigram reads the preprocessed artifact's counts (the evaluation's smoothed unigram)."""
    import numpy as np

    from pipeline.common.artifacts import ArtifactError
    from pipeline.evaluation.baselines import unigram_log_probs
    from pipeline.training.components import UpstreamArtifacts

    upstream = UpstreamArtifacts(tmp_path, {"tokenizer": {"vocab_size": 5}}, None, None)
    with pytest.raises(ArtifactError, match="head_init=unigram needs .*unigram_counts.npy.*set head_init=zero"):
        upstream.unigram_log_prior()
    with pytest.raises(ArtifactError, match="clean_support=observed needs .*unigram_counts.npy"):
        upstream.clean_support("observed")  # the same reader, another caller's line
    counts = np.array([0, 3, 1, 0, 6], dtype=np.int64)
    np.save(tmp_path / "unigram_counts.npy", counts)
    prior = upstream.unigram_log_prior()
    assert prior.dtype == torch.float32 and torch.allclose(prior.exp().sum(), torch.tensor(1.0))
    assert torch.allclose(prior, torch.from_numpy(unigram_log_probs(counts)).float())
    assert prior[4] > prior[1] > prior[2] > prior[0] == prior[3]  # finite where a token never occurred
    np.save(tmp_path / "unigram_counts.npy", counts[:4])
    for read in (upstream.unigram_log_prior, lambda: upstream.clean_support("observed")):
        with pytest.raises(ArtifactError, match=r"shape \(4,\), expected \(5,\)"):
            read()
