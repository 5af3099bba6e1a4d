"""The training stage end to end: real DeepSpeed (ZeRO-2, gloo on CPU), 2 ranks, the tiny model, real data.

Artifacts are built with the real preprocess CLI; the neighbour artifact is a contract-conformant
synthetic one (the neighbor_index stage has its own tests). The first DeepSpeed launch on a machine
JIT-builds a communication op (~2.5 min, cached in ~/.cache/torch_extensions).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.model import build_model

from cli_utils import step_losses

pytestmark = pytest.mark.slow  # every test here launches DeepSpeed (or needs a run that did)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DEEPSPEED = str(Path(PYTHON).with_name("deepspeed"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(run_dir: Path, preprocessed: Path, overrides: list[str], ranks: int = 1,
                  extra: list[str] | None = None) -> list[str]:
    args = ["--ds_config", "ds_configs/zero2.json", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
            "--preprocessed", str(preprocessed), *(extra or []), *overrides]
    if ranks == 1:
        return [PYTHON, "pipeline/train.py", *args]
    return [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "pipeline/train.py", *args]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(var, None)
    return e


def run_train(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def deepspeed_shm_buffers(cmd: list[str]) -> list[str]:
    """DeepSpeed's CPU comm buffers in /dev/shm of the launch ``cmd`` (named by its master port)."""
    port = cmd[cmd.index("--master_port") + 1]
    return sorted(p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def sample_ids(run_dir: Path, rank: int) -> dict[int, list[int]]:
    path = run_dir / f"sample_ids_rank{rank}.jsonl"
    return {r["step"]: r["ids"] for r in map(json.loads, path.read_text().splitlines())}


# --------------------------------------------------------------------------- fixtures
TINY = ["lr=3e-3", "warmup_steps=2", "val_every=0", "log_every=1", "ema_decay=0.9"]


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, preprocessed) -> Path:
    """8 uninterrupted steps on 2 ranks (ZeRO-2), checkpoints at 4 and 8, validation at the end.

    It also runs the gradient-variance probe every 4 steps; the runs compared with it do not, so
    their equality also shows that the probe leaves training untouched.
    """
    run_dir = tmp_path_factory.mktemp("train_ref") / "run"
    overrides = [*TINY, "max_steps=8", "ckpt_every=4", "log_sample_ids=true", "val_every=8", "probe_every=4",
                 "probe_buckets=3", "probe_samples=2"]
    cmd = train_command(run_dir, preprocessed, overrides, ranks=2)
    _check(run_train(cmd))
    assert deepspeed_shm_buffers(cmd) == [], "a finished run left DeepSpeed's shared memory in /dev/shm"
    return run_dir


# --------------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["mask", "uniform", "semdlm", "semdlm_softmax", "semdlm_plus"])
def test_training_loss_falls_for_each_kernel(kernel, preprocessed, neighbors, tmp_path):
    run_dir = tmp_path / "run"
    extra = ["--kernel", kernel, "--neighbors", str(neighbors)]
    # 20 steps: a kernel-aware model starts on a plateau (q_t(x_t | v) already explains the positions that
    # stayed), ~10 steps long at this lr, before its loss falls (semdlm_plus: 7.6 -> 5.3 over 40 steps).
    # From the default uniform output (head_init=unigram starts at the unigram, which 20 steps cannot beat).
    proc = run_train(train_command(run_dir, preprocessed, [*TINY, "max_steps=20", "kernel_args.k_max=8"],
                                   extra=extra))
    _check(proc)
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 21))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (18, 19, 20)])
    assert np.isfinite(list(losses.values())).all()
    assert last < first - 0.1, f"{kernel}: loss did not fall ({first:.3f} -> {last:.3f}): {losses}"


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference_run, preprocessed, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, "max_steps=8", "ckpt_every=4", "log_sample_ids=true", "val_every=8"]
    cmd = train_command(run_dir, preprocessed, overrides, ranks=2)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").exists() and 6 in step_losses(run_dir):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, no chance to clean up
    finally:
        proc.wait()
    killed_at = max(step_losses(run_dir))
    assert deepspeed_shm_buffers(cmd) == [], "a killed run left DeepSpeed's shared memory in /dev/shm"
    assert killed_at >= 6 and (run_dir / "checkpoints" / "global_step4" / "semdlm_checkpoint.json").is_file()

    proc = run_train(cmd)
    _check(proc)
    assert "resumed from global_step4" in proc.stdout
    ref, resumed = step_losses(reference_run), step_losses(run_dir)
    for step in range(5, 9):  # redone after the kill: bit-identical (fp32 on CPU, same world size)
        assert resumed[step] == ref[step], f"step {step}: {resumed[step]!r} != {ref[step]!r}"
    for rank in (0, 1):
        assert sample_ids(run_dir, rank) == sample_ids(reference_run, rank)
    seen = [i for rank in (0, 1) for ids in sample_ids(run_dir, rank).values() for i in ids]
    assert len(seen) == 8 * 16 and len(set(seen)) == len(seen), "a sample was repeated within the epoch"


@pytest.mark.slow
def test_universal_checkpoint_resumes_on_one_rank(reference_run, preprocessed, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    ckpts = run_dir / "checkpoints"
    subprocess.run([PYTHON, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                    str(ckpts / "global_step8"), "--output_folder", str(ckpts / "global_step8_universal")],
                   cwd=REPO, env=env(), check=True, capture_output=True, timeout=300)
    (ckpts / "latest_universal").write_text("global_step8_universal")
    overrides = [*TINY, "max_steps=10", "ckpt_every=4", "log_sample_ids=true", "val_every=0"]
    proc = run_train(train_command(run_dir, preprocessed, overrides, ranks=1, extra=["--universal"]))
    _check(proc)
    assert "resumed from global_step8_universal (step 8" in proc.stdout
    losses = step_losses(run_dir)
    assert {9, 10} <= set(losses) and np.isfinite([losses[9], losses[10]]).all()
    assert abs(losses[9] - losses[8]) < 0.5  # continues the trained model, not a fresh one
    before = {i for rank in (0, 1) for ids in sample_ids(reference_run, rank).values() for i in ids}
    after = [i for step, ids in sample_ids(run_dir, 0).items() if step > 8 for i in ids]
    assert len(after) == 2 * 16 and not before & set(after), "the epoch did not continue where it stopped"


def test_changed_model_config_is_refused(reference_run, preprocessed, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    proc = run_train(train_command(run_dir, preprocessed, [*TINY, "max_steps=12", "model_args.n_layer=3"]))
    assert proc.returncode == 2
    assert "refusing to resume" in proc.stderr and "n_layer: 2 -> 3" in proc.stderr
    proc = run_train(train_command(run_dir, preprocessed, [*TINY, "max_steps=12"], extra=["--kernel", "uniform"]))
    assert proc.returncode == 2 and "kernel.name: 'mask' -> 'uniform'" in proc.stderr


def test_export_round_trip_gives_identical_logits(reference_run, tmp_path, capsys):
    from pipeline.common.export_artifact import load_export, save_export
    from pipeline.core.posterior import decode_support

    out = tmp_path / "export"
    proc = subprocess.run([PYTHON, "-m", "pipeline.export", str(reference_run), "--out", str(out)], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=120)
    _check(proc)
    exported = load_export(out)
    assert exported.kind == "diffusion" and exported.kernel.cfg.name == "mask" and exported.mask_id == 103
    assert exported.config["training"]["step"] == 8
    states = torch.load(reference_run / "checkpoints" / "global_step8" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=True)
    reference = build_model(exported.model_cfg)
    reference.load_state_dict(states["ema"]["weights"])
    reference.eval()
    # the clean support travels in config.json: [PAD], [MASK] and the [unusedN] placeholders get f = 0
    record = exported.config["posterior"]
    support = decode_support(record["support"])
    assert record["clean_support"] == "special" and not support[[0, 103, 1]].any() and support[101:103].all()
    reference.set_clean_support(support)
    raw = {k: v for k, v in states["module"].items()}
    assert any(not torch.equal(raw[k], states["ema"]["weights"][k]) for k in raw), "EMA equals raw weights"
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, exported.model_cfg.vocab_size, (3, 32), generator=gen)
    t = torch.rand(3, generator=gen)
    with torch.no_grad():
        assert torch.equal(exported.model(x, t), reference(x, t))

    # A rerun (make demo twice) keeps an export of the same checkpoint file; another checkpoint or other
    # options of the same run rewrite it (a stale artifact); a directory holding anything else needs --force.
    from pipeline.export import main as export_main

    manifest = (out / "manifest.json").read_text()
    assert export_main([str(reference_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: up to date" and (out / "manifest.json").read_text() == manifest
    for extra, step, weights in ((["--tag", "global_step4"], 4, "ema"), (["--raw-weights"], 8, "raw")):
        assert export_main([str(reference_run), "--out", str(out), *extra]) == 0
        assert capsys.readouterr().out.strip() == f"{out}: written"
        training = load_export(out).config["training"]
        assert (training["step"], training["weights"]) == (step, weights)
    other = save_export(tmp_path / "other", reference, exported.model_cfg, exported.kernel.cfg,
                        exported.tokenizer_info, {}, "diffusion")  # not made from a run
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(reference_run), "--out", str(other)])
    assert exit_info.value.code == 2 and "pass --force" in capsys.readouterr().err
    assert load_export(other).config["training"] == {}  # untouched
    assert export_main([str(reference_run), "--out", str(other), "--force"]) == 0


def test_head_init_unigram_starts_the_output_at_the_training_unigram(preprocessed, tmp_path):
    """head_init=unigram: the run's output bias starts at the artifact's log unigram, its weight small and
    random; two Adam steps of lr 3e-3 move a bias by at most ~0.006 (the zero init sits ~10 nats away)."""
    from pipeline.core.model import HEAD_WEIGHT_STD
    from pipeline.evaluation.baselines import unigram_log_probs

    run_dir = tmp_path / "run"
    _check(run_train(train_command(run_dir, preprocessed, [*TINY, "max_steps=2", "ckpt_every=2",
                                                           "head_init=unigram"])))
    states = torch.load(run_dir / "checkpoints" / "global_step2" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=True)["module"]
    prior = torch.from_numpy(unigram_log_probs(np.load(preprocessed / "unigram_counts.npy"))).float()
    assert (states["head.bias"] - prior).abs().max() < 0.01
    assert abs(states["head.weight"].std().item() - HEAD_WEIGHT_STD) < 0.2 * HEAD_WEIGHT_STD


def test_validation_probe_and_perf_metrics_are_logged(reference_run):
    records = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/nelbo" in r]
    assert val and val[-1]["step"] == 8
    assert 0 < val[-1]["val/nelbo"] < np.log(30522) * 1.5
    assert np.isclose(val[-1]["val/ppl"], np.exp(val[-1]["val/nelbo"]))
    perf = [r for r in records if "perf/data_wait_share" in r]
    assert perf and all(0 <= r["perf/data_wait_share"] < 1 for r in perf)
    assert (reference_run / "tensorboard").is_dir() and any((reference_run / "tensorboard").iterdir())
    probes = [r for r in records if "gradvar/bucket0" in r]
    assert [r["step"] for r in probes] == [4, 8]
    assert all(r[f"gradvar/bucket{b}"] > 0 for r in probes for b in range(3))


@pytest.mark.slow
def test_zero3_trains_resumes_and_exports_like_zero2(reference_run, preprocessed, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, "ckpt_every=4", "log_sample_ids=true"]
    for steps in (4, 6):  # the second launch resumes from global_step4
        cmd = train_command(run_dir, preprocessed, [*overrides, f"max_steps={steps}"], ranks=2)
        cmd[cmd.index("ds_configs/zero2.json")] = "ds_configs/zero3.json"
        _check(run_train(cmd))
    ref, ours = step_losses(reference_run), step_losses(run_dir)
    assert sorted(ours) == list(range(1, 7))
    # Same data, same randomness, same math; only the reduction order of ZeRO-3 differs.
    assert np.allclose([ours[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-5, atol=0)
    assert all(sample_ids(run_dir, r)[s] == sample_ids(reference_run, r)[s] for r in (0, 1) for s in range(1, 7))
    proc = subprocess.run([PYTHON, "-m", "pipeline.export", str(run_dir), "--out", str(tmp_path / "export")],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    _check(proc)
    proc = subprocess.run([PYTHON, "-m", "pipeline.export", str(run_dir), "--out", str(tmp_path / "raw"),
                           "--raw-weights"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "zero_to_fp32" in proc.stderr


def test_autoregressive_baseline_trains_exports_and_judges(preprocessed, tmp_path):
    """model.causal=true trains the AR baseline through the same trainer; its export is a Gen-PPL judge."""
    from pipeline.common.export_artifact import load_export
    from pipeline.evaluation.genppl import generative_perplexity, load_judge

    run_dir = tmp_path / "ar"
    cmd = train_command(run_dir, preprocessed, [*TINY, "max_steps=12", "val_every=12", "model_args.causal=true"])
    cmd[cmd.index("configs/tiny.yaml")] = "configs/tiny_ar.yaml"
    _check(run_train(cmd))
    losses = step_losses(run_dir)
    assert np.mean([losses[s] for s in (10, 11, 12)]) < np.mean([losses[s] for s in (1, 2, 3)]) - 0.1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/nelbo" in r and np.isfinite(r["val/nelbo"]) for r in records)
    out = tmp_path / "ar_export"
    proc = subprocess.run([PYTHON, "-m", "pipeline.export", str(run_dir), "--out", str(out)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    _check(proc)
    exported = load_export(out)
    assert exported.kind == "ar" and exported.kernel is None
    result = generative_perplexity(["the cat sat on the mat .", "stocks fell sharply on monday ."],
                                   load_judge(str(out)))
    assert np.isfinite(result["gen_ppl"]) and result["gen_ppl"] > 1


def test_init_from_a_run_starts_a_new_run_under_another_kernel(reference_run, preprocessed, neighbors, tmp_path):
    """Continue the (mask) reference run under semdlm_plus: its weights, a fresh optimizer, step 0."""
    from pipeline.training.checkpoint import read_checkpoint_for_export

    run_dir = tmp_path / "ft"
    # lr 1e-30: one AdamW step moves no fp32 weight by more than 1e-30, so step 1 holds the initial weights
    overrides = [*TINY, "max_steps=1", "ckpt_every=1", "lr=1e-30", "warmup_steps=0", "kernel_args.k_max=8",
                 f"init_from={reference_run}", "init_from_weights=raw"]
    proc = run_train(train_command(run_dir, preprocessed, overrides,
                                   extra=["--kernel", "semdlm_plus", "--neighbors", str(neighbors)]))
    _check(proc)
    assert f"initialised from run {reference_run} (global_step8, raw weights)" in proc.stdout
    source = read_checkpoint_for_export(reference_run, use_ema=False).weights
    started = read_checkpoint_for_export(run_dir, use_ema=False)
    assert started.training["step"] == 1 and started.kernel_cfg.name == "semdlm_plus"
    for name, value in source.items():
        assert torch.allclose(started.weights[name], value, rtol=0, atol=1e-25), name

    proc = run_train(train_command(tmp_path / "bad", preprocessed, [*TINY, "model_args.n_layer=3",
                                                                     f"init_from={reference_run}"]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "init_from" in proc.stderr and "n_layer: 2 there, 3 here" in proc.stderr


def test_samples_during_training_are_logged_and_leave_training_unchanged(reference_run, preprocessed, tmp_path):
    """The reference run again with sample_every=4 and a Gen-PPL judge: texts, entropy, distinct-2 and
    Gen-PPL logged at steps 4 and 8; every loss equal to the reference's bit for bit."""
    from pipeline.common.artifacts import load_manifest
    from pipeline.common.export_artifact import save_export
    from pipeline.core.model import ModelConfig

    judge_cfg = ModelConfig.preset("tiny", vocab_size=30522, causal=True)
    tokenizer = load_manifest(preprocessed, stage="preprocess")["tokenizer"]
    judge = save_export(tmp_path / "judge", build_model(judge_cfg), judge_cfg, None, tokenizer, {}, "ar")
    run_dir = tmp_path / "run"
    overrides = [*TINY, "max_steps=8", "ckpt_every=4", "log_sample_ids=true", "val_every=8", "sample_every=4",
                 "sample_num=2", "sample_steps=4", f"judge={judge}"]
    proc = run_train(train_command(run_dir, preprocessed, overrides, ranks=2))
    _check(proc)
    assert step_losses(run_dir) == step_losses(reference_run)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    texts = {r["step"]: r["samples/text"] for r in records if "samples/text" in r}
    assert sorted(texts) == [4, 8] and all(len(t) == 2 and all(isinstance(s, str) and s for s in t)
                                           for t in texts.values())
    scalars = {r["step"]: r for r in records if "samples/entropy" in r}
    assert sorted(scalars) == [4, 8]
    for rec in scalars.values():
        assert rec["samples/entropy"] > 0 and 0 < rec["samples/distinct_2"] <= 1 and rec["samples/gen_ppl"] > 1
    assert "step 4: sample 0: " in proc.stdout
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and any(b"samples/text" in e.read_bytes() for e in events)
