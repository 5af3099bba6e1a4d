"""``Trainer.train_step`` with a tiny real model in a fake engine (no DeepSpeed): the loss it returns and
the gradients it leaves are those of the objective computed here by hand from the same corruption.

The fake engine behaves like DeepSpeed's on one rank: ``backward`` scales the loss by
1 / gradient_accumulation_steps (DeepSpeed's ``scale_wrt_gas``), gradients accumulate over the
micro-steps and ``step`` applies them at the accumulation boundary. The corruption is reproduced
through the loop's documented contract: diffusion times from ``TimeSampler`` and a noise generator
seeded with ``noise_seed(seed, step, rank, micro_step, world_size, accum)``.
"""
from __future__ import annotations

import copy
import signal

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.model import ModelConfig, build_model
from pipeline.core.objectives import build_objective
from pipeline.core.time_sampling import TimeSampler, TimeSamplerConfig
from pipeline.training.config import TrainConfig
from pipeline.training.loop import Dist, Trainer, noise_seed

V, L, PAD, MASK = 64, 12, 0, 63
LR = 0.05


class FakeEngine:
    """What Trainer uses of a DeepSpeed engine, for one rank, with SGD."""

    def __init__(self, module: torch.nn.Module, accum: int):
        self.module, self.accum = module, accum
        self.optimizer = torch.optim.SGD(module.parameters(), lr=LR)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.micro_steps, self.applied = 0, False
        self.backward_losses: list[float] = []
        self.applied_grads: dict[str, torch.Tensor] | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.backward_losses.append(float(loss.detach()))
        (loss / self.accum).backward()  # DeepSpeed: mean over the accumulation steps (and ranks)

    def step(self) -> None:
        self.micro_steps += 1
        self.applied = self.micro_steps % self.accum == 0
        if self.applied:
            self.applied_grads = {n: p.grad.detach().clone() for n, p in self.module.named_parameters()
                                  if p.grad is not None}
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def was_step_applied(self) -> bool:
        return self.applied

    def get_global_grad_norm(self) -> float | None:
        if self.applied_grads is None:
            return None
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in self.applied_grads.values())))

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


class FakeStream:
    """A fixed list of micro-batches, served in order."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches, self.position = batches, 0

    def next(self) -> dict:
        tokens = self.batches[self.position]
        ids = torch.arange(len(tokens)) + self.position * len(tokens)
        self.position += 1
        return {"tokens": tokens, "sample_id": ids}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def make_batches(num: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """``num`` micro-batches [size, L] of real tokens in 1..V-2; some rows end in padding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, V - 1, (num * size, L), generator=g)
    for row, length in ((0, 7), (2, 10), (3, 1 + L // 2)):  # padded tails (PAD = 0 is never a real token)
        x[row % len(x), length:] = PAD
    return list(x.split(size))


def tiny_model(causal: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig.preset("tiny", vocab_size=V, causal=causal))
    with torch.no_grad():  # move the zero-initialised adaLN / output weights off zero: every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return model


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """Trainer installs SIGUSR1/SIGTERM handlers (its stop flag); give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_one_step(tmp_path, cfg: TrainConfig, model, kernel, batches):
    env = Dist(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    engine = FakeEngine(model, cfg.accum_steps(1))
    objective = build_objective(kernel, cfg.loss, cfg.loss_config())
    trainer = Trainer(cfg, engine, objective, FakeStream(batches), None, env, tmp_path / "run", {},
                      {"identity_hash": "test"}, 1.0, L, PAD)
    try:
        out = trainer.train_step()
    finally:
        trainer.logger.close()
    return out, engine


def corruption(cfg: TrainConfig, kernel, batches):
    """(x_t, t, changed) of every micro-batch of step 0, as the loop's contract draws them."""
    accum = cfg.accum_steps(1)
    sampler = TimeSampler(TimeSamplerConfig(cfg.global_batch, 1, accum, cfg.t_min, cfg.antithetic_t, cfg.seed))
    out = []
    for a, x0 in enumerate(batches):
        t = sampler.sample(0, 0, a)
        gen = torch.Generator().manual_seed(noise_seed(cfg.seed, 0, 0, a, 1, accum))
        xt, changed = kernel.sample_xt(x0, t, generator=gen)
        out.append((xt, t, changed))
    return out


def assert_grads_equal(engine: FakeEngine, reference: torch.nn.Module) -> None:
    got = engine.applied_grads
    want = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and len(want) > 0
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("kernel_name, loss", [("mask", "change_aware"), ("uniform", "change_aware"),
                                               ("mask", "elbo")])
def test_diffusion_step_loss_and_gradients_are_the_objectives(tmp_path, kernel_name, loss):
    cfg = TrainConfig(global_batch=4, micro_batch=2, loss=loss, lambda_chg=1.0, lambda_same=0.25, t_min=0.05,
                      seed=3, warmup_steps=0, lr=LR)
    kernel = build_kernel(KernelConfig.preset(kernel_name), V, mask_id=MASK)
    batches = make_batches(2, 2)
    model = tiny_model(causal=False)
    reference = copy.deepcopy(model)
    out, engine = run_one_step(tmp_path, cfg, model, kernel, batches)

    numerator, denominator, unweighted_pad = 0.0, 0.0, 0.0
    for x0, (xt, t, changed) in zip(batches, corruption(cfg, kernel, batches)):
        assert torch.equal(changed, xt != x0)
        real = x0 != PAD
        logits = reference(xt, t)
        if loss == "elbo":  # MDLM's SUBS parameterisation: the clean token is never [MASK]
            logits = logits.masked_fill(torch.arange(V) == MASK, float("-inf"))
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # [B, L]
        if loss == "change_aware":  # Eq 120: lambda_chg on changed, lambda_same on unchanged real tokens
            w = torch.where(changed, cfg.lambda_chg, cfg.lambda_same) * real
            denominator = denominator + w.sum()
        else:  # mask kernel, alpha_t = 1 - t: the NELBO weight -alpha'/(1 - alpha) = 1/t on changed real tokens
            w = (1.0 / t)[:, None] * (changed & real)
            denominator = denominator + real.sum()
        numerator = numerator + (w * ce).sum()
        unweighted_pad = unweighted_pad + ce[~real].sum()
    expected = numerator / denominator
    expected.backward()

    assert out["applied"] and engine.micro_steps == 2 and len(engine.backward_losses) == 2
    assert out["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert float(unweighted_pad.detach()) > 0.1  # padding is there, carries a loss, and is left out above
    assert_grads_equal(engine, reference)
    assert out["grad_norm"] == pytest.approx(engine.get_global_grad_norm())
    with torch.no_grad():  # SGD applied exactly those gradients
        for (name, p), p0 in zip(model.named_parameters(), copy.deepcopy(reference).parameters()):
            assert torch.allclose(p, p0 - LR * engine.applied_grads[name], atol=1e-7), name


def test_autoregressive_step_is_mean_next_token_ce_over_real_targets(tmp_path):
    cfg = TrainConfig(global_batch=4, micro_batch=2, seed=1, warmup_steps=0, lr=LR)
    batches = make_batches(2, 2, seed=5)
    model = tiny_model(causal=True)
    reference = copy.deepcopy(model)
    out, engine = run_one_step(tmp_path, cfg, model, None, batches)

    x = torch.cat(batches)
    logits = reference(x)[:, :-1]
    ce = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
    real_target = x[:, 1:] != PAD
    expected = ce[real_target].mean()
    expected.backward()
    assert out["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert abs(out["loss"] - ce.mean().item()) > 1e-4  # padded targets would change it: they are excluded
    assert_grads_equal(engine, reference)


@pytest.mark.parametrize("micro_batch", [1, 2])
def test_gradient_does_not_depend_on_the_accumulation_split(tmp_path, micro_batch):
    """One global batch of 4 as 4 x 1, 2 x 2 or 1 x 4 micro-batches: the same loss and gradient (AR: no noise)."""
    cfg_whole = TrainConfig(global_batch=4, micro_batch=4, seed=1, warmup_steps=0, lr=LR)
    cfg_split = TrainConfig(global_batch=4, micro_batch=micro_batch, seed=1, warmup_steps=0, lr=LR)
    whole = make_batches(1, 4, seed=7)
    out_whole, engine_whole = run_one_step(tmp_path / "whole", cfg_whole, tiny_model(causal=True), None, whole)
    out_split, engine_split = run_one_step(tmp_path / "split", cfg_split, tiny_model(causal=True), None,
                                           list(whole[0].split(micro_batch)))
    assert engine_split.micro_steps == 4 // micro_batch
    assert out_split["loss"] == pytest.approx(out_whole["loss"], rel=1e-6)
    for name, g in engine_whole.applied_grads.items():
        assert torch.allclose(engine_split.applied_grads[name], g, rtol=1e-4, atol=1e-7), name


class QuietEngine(FakeEngine):
    """FakeEngine without host reads of its own, whose gradient norm stays a tensor (as DeepSpeed's)."""

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def get_global_grad_norm(self):
        if self.applied_grads is None:
            return None
        return torch.sqrt(sum((g.double() ** 2).sum() for g in self.applied_grads.values()))


def test_a_step_reads_device_values_back_once(tmp_path, monkeypatch):
    """No host sync per micro-step: loss numerators, denominators, the non-finite flag and the gradient norm
    stay tensors until one transfer at the end of the step (the sample ids are host data already)."""
    cfg = TrainConfig(global_batch=4, micro_batch=2, seed=3, warmup_steps=0, lr=LR)
    kernel = build_kernel(KernelConfig.preset("mask"), V, mask_id=MASK)
    env = Dist(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    engine = QuietEngine(tiny_model(causal=False), cfg.accum_steps(1))
    trainer = Trainer(cfg, engine, build_objective(kernel, cfg.loss, cfg.loss_config()),
                      FakeStream(make_batches(2, 2)), None, env, tmp_path / "run", {}, {"identity_hash": "test"},
                      1.0, L, PAD)
    reads = []
    for name in ("tolist", "item", "__float__", "__bool__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            if self.is_floating_point() or self.dtype == torch.bool:
                reads.append((_name, self.numel()))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    try:
        out = trainer.train_step()
    finally:
        monkeypatch.undo()
        trainer.logger.close()
    assert reads == [("tolist", 5)]  # loss sum, non-finite count, stop flag, denominator, gradient norm
    assert out["applied"] and out["grad_norm"] == pytest.approx(float(engine.get_global_grad_norm()))
    assert engine.micro_steps == 2 and out["loss"] > 0
