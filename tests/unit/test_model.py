"""The DiT backbone and the autoregressive baseline: shapes, parameter counts, masking, conditioning."""
import pytest
import torch

from pipeline.core.model import (
    HEAD_WEIGHT_STD,
    AutoregressiveLM,
    DiffusionTransformer,
    ModelConfig,
    build_model,
    conditioning_parameters,
    count_parameters,
    flops_per_token,
    parameter_count_formula,
)
from pipeline.core.objectives import AutoregressiveObjective

VARIANTS = [dict(), dict(tie_embeddings=True), dict(adaln=False), dict(tie_embeddings=True, adaln=False),
            dict(time_conditioning=False)]


def _tiny(**overrides) -> ModelConfig:
    return ModelConfig.preset("tiny", **overrides)


def _perturb(model: torch.nn.Module) -> None:
    """Move zero-initialised adaLN / output weights off zero so t and every input actually matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("overrides", VARIANTS)
def test_small_preset_parameter_count_matches_formula_on_meta_device(overrides):
    cfg = ModelConfig.preset("small", **overrides)
    with torch.device("meta"):
        model = DiffusionTransformer(cfg)
    assert count_parameters(model) == parameter_count_formula(cfg)
    assert cfg.n_layer == 12 and cfg.d_model == 768 and cfg.n_head == 12 and cfg.vocab_size == 30522


def test_small_preset_is_in_the_110m_class():
    counts = {name: parameter_count_formula(ModelConfig.preset("small", **o))["total"]
              for name, o in [("untied", {}), ("tied", dict(tie_embeddings=True)),
                              ("tied_no_adaln", dict(tie_embeddings=True, adaln=False))]}
    # tying removes exactly one V x d matrix (the output bias stays)
    assert counts["untied"] - counts["tied"] == 30522 * 768
    assert 100e6 < counts["tied_no_adaln"] < counts["tied"] < 120e6 < counts["untied"]


@pytest.mark.parametrize("overrides", VARIANTS + [dict(causal=True)])
def test_tiny_shapes_dtype_and_count(overrides):
    cfg = _tiny(**overrides)
    model = AutoregressiveLM(cfg) if cfg.causal else DiffusionTransformer(cfg)
    assert count_parameters(model) == parameter_count_formula(cfg)
    x = torch.randint(0, cfg.vocab_size, (3, 10))
    out = model(x) if cfg.causal else model(x, torch.rand(3))
    assert out.shape == (3, 10, cfg.vocab_size) and out.dtype == torch.float32


def test_logits_are_float32_under_bf16_autocast():
    model = DiffusionTransformer(_tiny())
    _perturb(model)
    x, t = torch.randint(0, 64, (2, 8)), torch.rand(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x, t).dtype == torch.float32
        assert DiffusionTransformer(_tiny(fp32_head=True))(x, t).dtype == torch.float32


def test_adaln_zero_init_makes_blocks_identity_and_output_uniform():
    model = DiffusionTransformer(_tiny())
    x = torch.randint(0, 64, (2, 8))
    logits = model(x, torch.rand(2))
    assert torch.count_nonzero(logits) == 0  # zero-initialised output layer: uniform prediction


def test_time_conditioning_switch():
    x = torch.randint(0, 64, (2, 8))
    t_a, t_b = torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])
    torch.manual_seed(0)
    conditioned = DiffusionTransformer(_tiny()).eval()
    _perturb(conditioned)
    assert not torch.allclose(conditioned(x, t_a), conditioned(x, t_b))
    with pytest.raises(ValueError, match="pass t"):
        conditioned(x)
    for off in (dict(time_conditioning=False), dict(adaln=False)):
        model = DiffusionTransformer(_tiny(**off)).eval()
        _perturb(model)
        assert torch.equal(model(x, t_a), model(x, t_b))
        assert torch.equal(model(x), model(x, t_a))
    assert parameter_count_formula(_tiny(adaln=False))["total"] < parameter_count_formula(_tiny())["total"]


def test_tied_output_shares_the_embedding_matrix():
    model = DiffusionTransformer(_tiny(tie_embeddings=True))
    _perturb(model)
    x, t = torch.randint(0, 64, (2, 8)), torch.rand(2)
    model(x, t).sum().backward()
    assert model.head is None
    # the embedding receives gradient from the output layer at every vocabulary row, not only used ids
    unused = torch.ones(64, dtype=torch.bool)
    unused[x.unique()] = False
    assert model.embed.weight.grad[unused].abs().sum() > 0


def test_causal_model_cannot_see_the_future_and_bidirectional_can():
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 12))
    j = 7
    y = x.clone()
    y[:, j] = (x[:, j] + 1) % 64
    ar = AutoregressiveLM(_tiny(causal=True)).eval()
    _perturb(ar)
    a, b = ar(x), ar(y)
    assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6)
    assert not torch.allclose(a[:, j:], b[:, j:], atol=1e-4)
    bi = DiffusionTransformer(_tiny()).eval()
    _perturb(bi)
    t = torch.full((2,), 0.5)
    assert not torch.allclose(bi(x, t)[:, :j], bi(y, t)[:, :j], atol=1e-4)


def test_padding_keys_are_invisible():
    torch.manual_seed(0)
    for cfg in (_tiny(), _tiny(causal=True)):
        model = DiffusionTransformer(cfg).eval()
        _perturb(model)
        x = torch.randint(0, 64, (2, 10))
        mask = torch.ones(2, 10, dtype=torch.bool)
        mask[:, 6:] = False
        y = x.clone()
        y[:, 6:] = (x[:, 6:] + 3) % 64   # change only padded tokens
        t = torch.rand(2)
        a, b = model(x, t, attention_mask=mask), model(y, t, attention_mask=mask)
        assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
        assert torch.isfinite(a).all()
        # the mask is not a no-op: without it the real positions see the changed (later) padding
        if not cfg.causal:
            assert not torch.allclose(model(x, t)[:, :6], model(y, t)[:, :6], atol=1e-4)
        # left padding: under causal attention the first query sees no real key; still finite
        assert torch.isfinite(model(x, t, attention_mask=mask.flip(1))).all()


def test_dropout_eval_is_deterministic_and_train_is_not():
    model = DiffusionTransformer(_tiny(dropout=0.3))
    _perturb(model)
    x, t = torch.randint(0, 64, (2, 8)), torch.rand(2)
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


@pytest.mark.parametrize("causal", [False, True])
def test_activation_checkpointing_recomputes_blocks_with_the_same_outputs_and_gradients(causal):
    """Dropout on: the recomputation replays the same masks, so nothing but memory and time changes."""
    plain = build_model(_tiny(dropout=0.2, causal=causal))
    _perturb(plain)
    recomputed = build_model(_tiny(dropout=0.2, causal=causal, activation_checkpointing=True))
    recomputed.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(3)
    x, t = torch.randint(0, 64, (3, 10), generator=g), torch.rand(3, generator=g)
    weights = torch.randn(3, 10, 64, generator=g)
    outputs, grads, calls = [], [], []
    for model in (plain, recomputed):
        backbone = model.backbone if causal else model
        count = [0]
        backbone.blocks[0].register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        model.train()
        torch.manual_seed(7)
        out = model(x) if causal else model(x, t)
        (out * weights).sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed block ran again in the backward
    assert torch.equal(outputs[0], outputs[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7), name
    recomputed.eval(), plain.eval()  # no recomputation outside training
    with torch.no_grad():
        args = (x,) if causal else (x, t)
        assert torch.equal(recomputed(*args), plain(*args))


def test_activation_checkpointing_is_not_part_of_the_architecture():
    on = ModelConfig.preset("tiny", activation_checkpointing=True)
    assert "activation_checkpointing" in on.to_dict()
    assert on.architecture_dict() == ModelConfig.preset("tiny").architecture_dict()
    assert "activation_checkpointing" not in on.architecture_dict()


def test_ar_objective_loss_starts_uniform_and_a_training_step_reduces_it():
    torch.manual_seed(0)
    model = AutoregressiveLM(_tiny(causal=True))
    x = torch.randint(0, 64, (4, 16))
    pad = torch.zeros(4, 16, dtype=torch.bool)
    pad[0, 12:] = True
    objective = AutoregressiveObjective()
    batch = objective.prepare(x, ~pad)

    def loss():
        num, den = objective.loss_terms(objective.logits(model, batch), batch)
        return num / den

    loss0 = loss()
    # causal attention hides the trailing padding: the masked forward gives the same loss
    assert torch.allclose(loss0, objective.loss_terms(model(x, ~pad)[:, :-1], batch)[0] / batch.denominator)
    assert abs(loss0.item() - torch.log(torch.tensor(64.0)).item()) < 1e-4  # uniform at init
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < loss0.item() - 0.1


def test_config_validation_and_sequence_length():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_head=3)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.preset("tiny", layers=3)
    with pytest.raises(ValueError, match="causal=True"):
        AutoregressiveLM(_tiny())
    model = DiffusionTransformer(_tiny(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long), torch.rand(1))


def test_flops_per_token_formula():
    cfg = _tiny()
    n = parameter_count_formula(cfg)["total"] - cfg.vocab_size * cfg.d_model  # input lookup is free
    n_cond = conditioning_parameters(cfg)  # acts on c: once per sequence
    assert n_cond == (32 * 32 + 32) + (32 * 32 + 32) + 2 * (32 * 6 * 64 + 6 * 64) + (32 * 2 * 64 + 2 * 64)
    assert flops_per_token(cfg, 32) == 6 * (n - n_cond) + 6 * n_cond / 32 + 12 * cfg.n_layer * cfg.d_model * 32
    tied = _tiny(tie_embeddings=True)
    assert flops_per_token(tied, 32) == (6 * (parameter_count_formula(tied)["total"] - n_cond) + 6 * n_cond / 32
                                         + 12 * 2 * 64 * 32)
    plain = _tiny(adaln=False)
    assert conditioning_parameters(plain) == 0
    assert flops_per_token(plain, 32) == 6 * (parameter_count_formula(plain)["total"] - 64 * 64) + 12 * 2 * 64 * 32


@pytest.mark.parametrize("batch, seq_len", [(2, 128), (1, 1024)])
def test_flops_per_token_matches_torchs_flop_counter_on_small(batch, seq_len):
    """Forward + backward of ``small`` counted op by op (fake tensors: shapes only, no compute); the math SDPA
    backend so attention shows up as the bmm's the counter knows. Equal up to biases and LayerNorm weights."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig.preset("small")
    with FakeTensorMode(), sdpa_kernel(SDPBackend.MATH):
        model = DiffusionTransformer(cfg)
        x, t = torch.randint(0, cfg.vocab_size, (batch, seq_len)), torch.rand(batch)
        with FlopCounterMode(display=False) as counter:
            model(x, t).sum().backward()
    counted = counter.get_total_flops() / (batch * seq_len)
    assert counted == pytest.approx(flops_per_token(cfg, seq_len), rel=2e-3)
    attention = counter.get_flop_counts()["Global"][torch.ops.aten.bmm] / (batch * seq_len)
    assert attention == 12 * cfg.n_layer * cfg.d_model * seq_len


@pytest.mark.parametrize("causal", [False, True])
def test_the_output_starts_at_the_given_prior(causal):
    """head_init=unigram: the bias is the prior and the head's weight is small but not zero (a zero weight
    with an optimal bias is a saddle: start_output_at); with weight_std=0 the first prediction is the prior."""
    cfg = _tiny(causal=causal)
    prior = torch.log_softmax(torch.randn(cfg.vocab_size, generator=torch.Generator().manual_seed(0)), -1)
    model = build_model(cfg, prior).eval()
    backbone = model.backbone if causal else model
    assert torch.equal(backbone.head.bias, prior)
    assert abs(backbone.head.weight.std().item() - HEAD_WEIGHT_STD) < 0.1 * HEAD_WEIGHT_STD
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        backbone.start_output_at(prior, weight_std=0.0)
        logits = model(x) if causal else model(x, torch.rand(2))
    assert torch.allclose(torch.log_softmax(logits, -1), prior.expand_as(logits), atol=1e-6)
    zero = build_model(cfg).eval()  # MDLM's zero head: uniform
    with torch.no_grad():
        flat = zero(x) if causal else zero(x, torch.rand(2))
    assert torch.allclose(flat, torch.zeros_like(flat))
    for bad in (prior[:-1], torch.full_like(prior, -torch.inf)):
        with pytest.raises(ValueError, match="finite"):
            build_model(cfg, bad)
