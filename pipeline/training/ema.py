"""Exponential moving average of the weights, kept in float32 next to the training parameters.

ema <- decay * ema + (1 - decay) * param after every applied optimizer step (skipped non-finite
steps do not move it). The EMA always holds full tensors: under ZeRO-3, where every rank holds a
partition of each parameter, the parameters are gathered for the update (one all-gather of the
weights per step, the price of an exportable, world-size-independent EMA).
"""
from __future__ import annotations

import contextlib

import torch


def gathered_parameters(module: torch.nn.Module):
    """Context in which every parameter of ``module`` is a full tensor (a no-op unless ZeRO-3)."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_tensor") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, _ in module.named_parameters()]
        with gathered_parameters(module):
            self.shadow = [p.detach().float().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        with gathered_parameters(module):
            params = [p.detach().float() for p in module.parameters()]
            torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "weights": dict(zip(self.names, self.shadow))}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        if set(weights) != set(self.names):
            raise ValueError("EMA state does not match the model's parameters")
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(weights[name])
