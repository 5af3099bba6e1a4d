"""Weights & Biases beside TensorBoard (TrainConfig ``loggers: [tensorboard, wandb]``), on rank 0.

The same metric names and steps as TensorBoard and metrics.jsonl; the samples drawn during training as a
``wandb.Table`` (step, index, text) under the same key. ``wandb_mode: auto`` (the default) logs online only
when a W&B API key is configured (WANDB_API_KEY or a ~/.netrc entry for api.wandb.ai) and api.wandb.ai
answers within 3 s, else offline into RUN_DIR/wandb (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it
later); WANDB_MODE, when set, wins, as W&B documents. The run id is kept in RUN_DIR/wandb_run_id, so a
resumed run (a requeued job) continues the same W&B run; steps a resume redoes are dropped by W&B (its
steps only increase), metrics.jsonl keeps them.
"""
from __future__ import annotations

import netrc
import os
import secrets
import socket
from pathlib import Path

from pipeline.common.errors import ConfigError

WANDB_MODES = ("auto", "online", "offline")
WANDB_HOST = "api.wandb.ai"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str = WANDB_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(requested: str) -> str:
    """online / offline / disabled from ``wandb_mode`` (auto: online when there is a key and a network)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    return "online" if _has_api_key() and _reachable() else "offline"


class WandbSink:
    """One W&B run per training run directory (resumed with it)."""

    def __init__(self, run_dir: Path, project: str, mode: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("loggers: wandb needs the wandb package: pip install 'semdlm[wandb]'") from None
        self.wandb = wandb
        id_file = run_dir / "wandb_run_id"
        if not id_file.exists():
            id_file.write_text(secrets.token_hex(4) + "\n")
        self.mode = resolve_mode(mode)
        self.run = wandb.init(project=project, dir=str(run_dir), id=id_file.read_text().strip(), resume="allow",
                              name=run_dir.name, mode=self.mode, config=config,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_text(self, step: int, key: str, texts: list[str]) -> None:
        table = self.wandb.Table(columns=["step", "index", "text"], data=[[step, i, t] for i, t in enumerate(texts)])
        self.run.log({key: table}, step=step)

    def close(self) -> None:
        self.run.finish()
