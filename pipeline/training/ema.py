"""Exponential moving average of the weights, kept in float32 next to the training parameters.

ema <- decay * ema + (1 - decay) * param after every applied optimizer step (skipped NaN steps do
not move it). With ZeRO-3 parameters are partitioned; the EMA is then kept over each rank's
partition (``param.ds_tensor``) and gathered only at export time.
"""
from __future__ import annotations

import torch


def _data(p: torch.nn.Parameter) -> torch.Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, _ in module.named_parameters()]
        self.shadow = [_data(p).detach().float().clone() for _, p in module.named_parameters()]

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        params = [_data(p).float() for _, p in module.named_parameters()]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "weights": dict(zip(self.names, self.shadow))}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        if set(weights) != set(self.names):
            raise ValueError("EMA state does not match the model's parameters")
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(weights[name])
