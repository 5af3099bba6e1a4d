"""Train a diffusion language model with DeepSpeed.

    deepspeed pipeline/train.py --ds_config ds_configs/zero2.json --config configs/lm1b_small.yaml \\
        --run-dir runs/lm1b --preprocessed data/lm1b --neighbors data/lm1b_nn [--kernel semdlm_plus] \\
        [--max-steps N] [key=value ...]
    python pipeline/train.py ...            # one process, same flags

The data: ``--preprocessed DIR`` (one local artifact) or ``data.streams`` in the config (several
artifacts, local or on any storage mosaicml-streaming reads, mixed by weight; docs/training.md, Data).

A run directory that holds a checkpoint resumes automatically (a changed model/kernel config is
refused). ``--universal`` resumes from a universal checkpoint on another world size (docs/training.md).
Rank 0 holds the run directory's lock (RUN_DIR/.lock) for the whole run: a second job on the same
directory exits with status 2 naming the holder; ``--break-lock`` takes it over.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed pipeline/train.py): make `pipeline` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.common.artifacts import canonical_json, hash_object, stage_errors  # noqa: E402
from pipeline.common.locks import DirectoryLock, add_break_lock_argument, run_dir_lock_path  # noqa: E402

PROG = "pipeline/train.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Train a (semantic) diffusion LM with DeepSpeed.")
    p.add_argument("--ds_config", "--ds-config", dest="ds_config", default="ds_configs/zero2.json",
                   help="DeepSpeed JSON (ZeRO stage etc.); batch, clipping, precision come from --config")
    p.add_argument("--config", default=None, help="TrainConfig YAML (configs/*.yaml)")
    p.add_argument("--run-dir", default=None, help="run directory: checkpoints, TensorBoard, metrics")
    p.add_argument("--preprocessed", default=None,
                   help="preprocess artifact directory (several, or remote ones: data.streams in the config)")
    p.add_argument("--neighbors", default=None, help="neighbor_index artifact directory (semdlm kernels)")
    p.add_argument("--kernel", default=None, help="kernel preset (mask, uniform, semdlm, semdlm_softmax, semdlm_plus)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train to")
    p.add_argument("--universal", action="store_true",
                   help="resume from RUN_DIR/checkpoints/latest_universal (another world size)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    add_break_lock_argument(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="TrainConfig overrides (yaml values)")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_rank() -> int:
    """The global rank the launcher gave this process, before torch.distributed starts (as init_distributed
    maps it: RANK from deepspeed / torchrun, SLURM_PROCID from srun, else a world of one)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def lock_run_dir(run_dir: str, break_lock: bool):
    """Rank 0 takes the run directory's one lock before anything writes there; the other ranks write
    only after the rendezvous with rank 0 (init_distributed), so they never touch the lock."""
    if launcher_rank() != 0:
        return contextlib.nullcontext()
    return DirectoryLock(run_dir_lock_path(run_dir), what=f"run directory {run_dir}", break_lock=break_lock)


def init_distributed(local_rank_arg: int | None):
    """torch.distributed through DeepSpeed; a single process without a launcher gets a world of one."""
    import deepspeed

    from pipeline.common.cpu_host import keep_freed_memory, release_deepspeed_shm
    from pipeline.training.data import set_streaming_env
    from pipeline.training.loop import Dist

    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # srun with one task per GPU (slurm/train.sh): SLURM numbers the ranks, the script sets MASTER_*.
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ["SLURM_LOCALID"],
                          LOCAL_WORLD_SIZE=os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg or 0))
    # The deepspeed launcher exports LOCAL_SIZE; torchrun exports LOCAL_WORLD_SIZE.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world)))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if not cuda:  # pipeline/common/cpu_host.py
        keep_freed_memory()  # no caching allocator on CPU: keep the per-step tensors' pages
        release_deepspeed_shm(rank, torch.distributed.barrier)  # else 69 MB per rank stay in /dev/shm
    set_streaming_env(rank, world, local_rank, local_world)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(rank, world, local_rank, local_world, device)


def main(argv: list[str] | None = None) -> int:
    from pipeline.training.loop import NonFiniteAbort

    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        try:
            return run(args)
        except NonFiniteAbort as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 3


def run(args) -> int:
    from pipeline.training.config import load_config

    cfg = load_config(args.config, args.overrides, run_dir=args.run_dir, preprocessed=args.preprocessed,
                      neighbors=args.neighbors, kernel=args.kernel, max_steps=args.max_steps)
    if cfg.run_dir is None:
        raise ValueError("run_dir is required (--run-dir or run_dir= in the config)")
    if cfg.data_spec() is None:
        raise ValueError("preprocessed is required (--preprocessed or preprocessed= in the config), "
                         "or data.streams in the config (docs/training.md, Data)")
    with lock_run_dir(cfg.run_dir, args.break_lock):  # before DeepSpeed starts: a second job stops cheaply
        return train(args, cfg)


def train(args, cfg) -> int:
    return build_trainer(args, cfg).run()


def build_engine(cfg, model_cfg, ds_config: dict, env, compile_backend: str = "inductor", init=None):
    """(DeepSpeed engine, parameter counts): the model built from ``cfg.seed``, torch's fused AdamW
    unless the DeepSpeed JSON asks for its own (ZeRO-Offload), our LR schedule.

    ``ds_config`` is already patched (``patch_ds_config``). ``cfg.compile`` compiles the model's forward
    in place with ``compile_backend`` (``nn.Module.compile``: parameter names, checkpoints and the EMA are
    unchanged; bench/gpu.py --smoke uses ``aot_eager``, which skips code generation).
    """
    import deepspeed

    from pipeline.core.model import build_model, count_parameters
    from pipeline.training.init_from import apply_init_weights
    from pipeline.training.loop import lr_multiplier

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(model_cfg)
    if init is not None:  # init_from (pipeline/training/init_from.py): a new run from existing weights
        apply_init_weights(model, init)
        if env.rank == 0:
            print(f"initialised from {init.source}: optimizer fresh, step 0", flush=True)
    n_params = count_parameters(model)  # before DeepSpeed partitions anything (ZeRO-3)
    if cfg.compile:
        model.compile(backend=compile_backend)
    optimizer = None
    if "optimizer" not in ds_config:
        # fused: one pass over the flat fp32 partition that ZeRO hands it, on GPU and CPU alike (on CPU
        # the default single-tensor loop costs ~15x the fused kernel: docs/benchmarks.md, Reference step)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay, fused=cfg.adamw == "fused",
                                      foreach=cfg.adamw == "foreach")
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=model.parameters() if optimizer is None else None,
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, cfg)))
    return engine, n_params


def build_trainer(args, cfg):
    """Everything a run needs, on every rank: distributed, the engine, kernel, objective, data, the Trainer.

    ``train`` runs it; ``bench/reference_step.py`` times the same object's steps.
    """
    from pipeline.core.kernels import KernelConfig, make_kernel
    from pipeline.core.model import flops_per_token
    from pipeline.core.objectives import build_objective
    from pipeline.core.posterior import PLAIN, posterior_record
    from pipeline.training import checkpoint as ckpt
    from pipeline.training import data
    from pipeline.training.components import load_data_upstream
    from pipeline.training.ds_config import load_ds_config, patch_ds_config
    from pipeline.training.init_from import load_init_weights
    from pipeline.training.loop import Trainer

    kernel_cfg: KernelConfig = cfg.kernel_config()
    data_spec = cfg.data_spec()
    upstream = load_data_upstream(data_spec, cfg.neighbors, kernel_cfg)  # remote manifests fetched and checked
    if cfg.seq_len is not None and cfg.seq_len != upstream.seq_len:
        raise ValueError(f"config expects seq_len {cfg.seq_len}, {data_spec.streams[0].where} holds "
                         f"{upstream.seq_len}-token sequences (set seq_len=null to accept any)")
    model_cfg = cfg.model_config(upstream.vocab_size, upstream.seq_len)
    ds_config = load_ds_config(args.ds_config)
    identity = cfg.identity(upstream.vocab_size, upstream.seq_len, upstream.tokenizer["identity"])
    existing = ckpt.latest_tag(Path(cfg.run_dir))
    if existing is not None and not args.universal:  # refuse before any expensive setup
        ckpt.check_files(Path(cfg.run_dir), existing)  # a damaged tag: named, with the older one to fall back to
        ckpt.check_identity(ckpt.read_marker(Path(cfg.run_dir), existing)["identity"], identity, cfg.run_dir)
    init = None  # a run with a checkpoint resumes from it: init_from only starts new runs
    if cfg.init_from and existing is None and not args.universal:
        init = load_init_weights(cfg.init_from, model_cfg, upstream.tokenizer["identity"], cfg.init_from_weights)

    env = init_distributed(args.local_rank)
    run_dir = Path(cfg.run_dir)
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    data.clean_stale_shared_memory()

    ds_config = patch_ds_config(ds_config, cfg, env.world_size, env.device.type == "cuda")
    if args.universal:
        ds_config.setdefault("checkpoint", {})["load_universal"] = True
    engine, n_params = build_engine(cfg, model_cfg, ds_config, env, init=init)
    # The AR baseline (model.causal) corrupts nothing: no kernel.
    kernel = None if model_cfg.causal else make_kernel(kernel_cfg, upstream.vocab_size, upstream.mask_id,
                                                       upstream.tables, env.device)
    support = None if model_cfg.causal else upstream.clean_support(cfg.clean_support)
    posterior, reading = None, PLAIN
    if kernel is not None:  # the output layer reads f = 0 off the support; [MASK] otherwise by the reading
        engine.module.set_clean_support(None if support is None else torch.as_tensor(support))
        mask_out = upstream.mask_id if support is None or (upstream.mask_id is not None and
                                                           support[upstream.mask_id]) else None
        reading = cfg.reading(mask_out)
        posterior = posterior_record(cfg.posterior_config(), reading, support)
    objective = build_objective(kernel, cfg.loss, cfg.loss_config(), reading)

    check_indexes(upstream)  # a stale cache is refused before streaming reads it ...
    dataset, loader = data.build_train_loader(data_spec, cfg.micro_batch, cfg.shuffle_seed, cfg.num_canonical_nodes,
                                              cfg.num_workers)
    val_set = (data.ValidationSet(data_spec, env.rank, env.world_size, cfg.micro_batch, cfg.val_batches)
               if cfg.val_every else None)
    check_indexes(upstream)  # ... and an index just downloaded must be the manifest's (not a torn upload)
    marker = {"identity": identity, "identity_hash": hash_object(identity), "tokenizer": upstream.tokenizer,
              "artifacts": upstream.references(), "posterior": posterior}
    if env.rank == 0:
        (run_dir / "train_config.json").write_text(canonical_json({"config": cfg.to_dict(), "ds_config": ds_config,
                                                                   "world_size": env.world_size}) + "\n")
        (run_dir / "streams.json").write_text(canonical_json(data.stream_table(dataset, data_spec.streams)) + "\n")
        precision = "bf16 autocast" if ds_config["torch_autocast"]["enabled"] else "fp32"
        print(f"model {cfg.model}: {n_params['total']:,} parameters ({n_params['non_embedding']:,} non-embedding); "
              f"{'autoregressive' if model_cfg.causal else 'kernel ' + kernel_cfg.name}; "
              f"world {env.world_size} x micro {cfg.micro_batch} x accum "
              f"{cfg.accum_steps(env.world_size)} = {cfg.global_batch}; {precision}", flush=True)
    samples = None
    if cfg.sample_every and env.rank == 0 and kernel is not None:  # the AR baseline is not sampled in training
        from pipeline.training.samples import TrainingSamples

        samples = TrainingSamples(cfg, kernel, upstream.tokenizer.get("name_or_path"), upstream.seq_len, env.device)
    return Trainer(cfg, engine, objective, data.BatchStream(loader), val_set, env, run_dir, identity, marker,
                   flops_per_token(model_cfg, upstream.seq_len), upstream.seq_len, upstream.pad_id,
                   universal=args.universal, samples=samples)


def check_indexes(upstream) -> None:
    """Each data stream's cached split index is the one its manifest lists (pipeline/training/streams.py)."""
    from pipeline.training.streams import check_cached_index

    for split, pairs in (("train", upstream.train_streams), ("validation", upstream.validation_streams)):
        for spec, manifest in pairs:
            check_cached_index(spec, manifest, split)


if __name__ == "__main__":
    sys.exit(main())
