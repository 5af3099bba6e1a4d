"""``--dry-run``: the plan, cell by cell, with what is cached and what the rest is projected to cost."""
from __future__ import annotations

from .cost import MFU, cpu_factor, seconds
from .plan import Cell, Plan
from .runner import is_done

# Cells whose cost is not FLOP-bound on the model (tokenising, embedding the vocabulary, the diagnostics):
# a fixed projection per cell, measured on the shared LM1B sample on 2 cores (docs/study.md).
FIXED_SECONDS = {"preprocess": 60.0, "neighbors": 90.0, "diagnose": 30.0, "export": 15.0}


def cell_seconds(cell: Cell, gpus: int) -> float:
    if cell.kind in FIXED_SECONDS:
        return FIXED_SECONDS[cell.kind]
    # evaluation runs on one device even when training used several
    s = seconds(cell.flops, gpus if cell.kind == "train" else min(gpus, 1))
    if not gpus and cell.run is not None:
        s *= cpu_factor(cell.kind, cell.run.kernel, cell.run.loss)
    return s


def print_plan(plan: Plan, cells: list[Cell], out=print) -> dict:
    """Print the plan; return the totals (seconds to run, cached cells, GPU hours)."""
    gpus = plan.spec.train.gpus
    device = f"{gpus} x A100 at MFU {MFU:.0%}" if gpus else "this 2-core CPU"
    out(f"study {plan.spec.name}: {len(cells)} cells under {plan.out} (projected on {device})")
    out(f"{'cell':<56} {'status':<8} {'projected':>12}")
    total = cached = 0.0
    gpu_seconds = 0.0
    for cell in cells:
        done = is_done(plan, cell)
        s = cell_seconds(cell, gpus)
        cached += done
        if not done:
            total += s
            gpu_seconds += s * (gpus if cell.kind == "train" else min(gpus, 1))
        out(f"{cell.name:<56} {'cached' if done else 'to run':<8} {_human(s):>12}")
    out(f"to run: {len(cells) - int(cached)} cells, projected {_human(total)} wall time in order"
        + (f", {gpu_seconds / 3600:.1f} GPU hours" if gpus else ""))
    return {"seconds": total, "cached": int(cached), "gpu_hours": gpu_seconds / 3600}


def _human(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
