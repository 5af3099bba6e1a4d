"""The ``--device`` flag of the stages that run a model: checked when parsed (a torch device string)
and before the model loads (the device exists here), so a typo is a one-line error, not torch's
traceback from deep inside ``model.to()``."""
from __future__ import annotations

from .errors import ConfigError


def check_device_name(value, flag: str = "--device", allow_auto: bool = False) -> None:
    """``value`` parses as a torch device (``cpu``, ``cuda``, ``cuda:1``, ...; ``auto`` when allowed)."""
    if allow_auto and value == "auto":
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        choices = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
        raise ConfigError(f"{flag} must be a torch device ({choices}), got {value!r}") from None


def check_device_available(value: str, flag: str = "--device") -> None:
    """A CUDA device named by ``value`` exists on this machine (``auto`` and CPU devices always do)."""
    if value == "auto":
        return
    import torch

    check_device_name(value, flag)
    device = torch.device(value)
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {value}: no CUDA device is available on this machine (use --device cpu)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{flag} {value}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def default_device() -> str:
    """``cuda`` where this machine has a CUDA device, else ``cpu`` (the stages' --device default)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
