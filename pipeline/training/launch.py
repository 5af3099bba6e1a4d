"""A training run's wiring: config -> distributed -> DeepSpeed engine -> kernel, objective, data -> Trainer.

``pipeline/train.py`` is the CLI over :func:`train`; ``bench/`` builds the same objects through
:func:`build_trainer` and :func:`build_engine`, so what it times is what production runs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.common.artifacts import ConfigError, canonical_json, hash_object

from .distributed import init_distributed, lock_run_dir


def train(cfg, ds_config: str, *, local_rank: int | None = None, universal: bool = False,
          break_lock: bool = False) -> int:
    """Run ``cfg`` (a validated TrainConfig) to its ``max_steps``; 0 when it got there."""
    check_runnable(cfg)
    with lock_run_dir(cfg.run_dir, break_lock):  # before DeepSpeed starts: a second job stops cheaply
        return build_trainer(cfg, ds_config, local_rank=local_rank, universal=universal).run()


def check_runnable(cfg) -> None:
    """A run directory and data to train on (what the CLI cannot check by itself)."""
    if cfg.run_dir is None:
        raise ValueError("run_dir is required (--run-dir or run_dir= in the config)")
    if cfg.data_spec() is None:
        raise ValueError("preprocessed is required (--preprocessed or preprocessed= in the config), "
                         "or data.streams in the config (docs/training.md, Data)")


def build_engine(cfg, model_cfg, ds_config: dict, env, compile_backend: str = "inductor", init=None,
                 log_prior=None):
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
    model = build_model(model_cfg, log_prior)
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


def _checked_start(cfg, upstream, identity: dict, universal: bool):
    """Refuse a run that cannot resume before any expensive setup; the init_from weights of a new run."""
    from pipeline.training import checkpoint as ckpt
    from pipeline.training.init_from import load_init_weights

    existing = ckpt.latest_tag(Path(cfg.run_dir))
    if existing is not None and not universal:
        ckpt.check_files(Path(cfg.run_dir), existing)  # a damaged tag: named, with the older one to fall back to
        ckpt.check_identity(ckpt.read_marker(Path(cfg.run_dir), existing)["identity"], identity, cfg.run_dir)
    if cfg.init_from and existing is None and not universal:  # a run with a checkpoint resumes from it
        model_cfg = cfg.model_config(upstream.vocab_size, upstream.seq_len)
        return load_init_weights(cfg.init_from, model_cfg, upstream.tokenizer["identity"], cfg.init_from_weights)
    return None


def _objective(cfg, model_cfg, upstream, engine, device):
    """(kernel, objective, the posterior record): the AR baseline (model.causal) corrupts nothing: no kernel.

    The output layer reads f = 0 off the clean support; [MASK] otherwise by the reading."""
    from pipeline.core.kernels import make_kernel
    from pipeline.core.objectives import build_objective
    from pipeline.core.posterior import PLAIN, posterior_record

    if model_cfg.causal:
        return None, build_objective(None, cfg.loss, cfg.loss_config(), PLAIN), None
    kernel = make_kernel(cfg.kernel_config(), upstream.vocab_size, upstream.mask_id, upstream.tables, device)
    support = upstream.clean_support(cfg.clean_support)
    engine.module.set_clean_support(None if support is None else torch.as_tensor(support))
    mask_out = upstream.mask_id if support is None or (upstream.mask_id is not None and
                                                       support[upstream.mask_id]) else None
    reading = cfg.reading(mask_out)
    try:
        objective = build_objective(kernel, cfg.loss, cfg.loss_config(), reading, cfg.elbo_chain)
    except ValueError as e:  # elbo_chain=resampling on a kernel without its chain: the user's config
        raise ConfigError(str(e)) from None
    return kernel, objective, posterior_record(cfg.posterior_config(), reading, support)


def _write_run_files(cfg, run_dir: Path, ds_config: dict, env, dataset, data_spec) -> None:
    from pipeline.training import data

    (run_dir / "train_config.json").write_text(canonical_json({"config": cfg.to_dict(), "ds_config": ds_config,
                                                               "world_size": env.world_size}) + "\n")
    (run_dir / "streams.json").write_text(canonical_json(data.stream_table(dataset, data_spec.streams)) + "\n")


def build_trainer(cfg, ds_config_path: str, *, local_rank: int | None = None, universal: bool = False):
    """Everything a run needs, on every rank: distributed, the engine, kernel, objective, data, the Trainer.

    :func:`train` runs it; ``bench/reference_step.py`` times the same object's steps.
    """
    from pipeline.core.model import flops_per_token
    from pipeline.training import data
    from pipeline.training.components import load_data_upstream
    from pipeline.training.ds_config import load_ds_config, patch_ds_config
    from pipeline.training.loop import Trainer

    data_spec = cfg.data_spec()
    upstream = load_data_upstream(data_spec, cfg.neighbors, cfg.kernel_config())  # remote manifests checked
    if cfg.seq_len is not None and cfg.seq_len != upstream.seq_len:
        raise ValueError(f"config expects seq_len {cfg.seq_len}, {data_spec.streams[0].where} holds "
                         f"{upstream.seq_len}-token sequences (set seq_len=null to accept any)")
    model_cfg = cfg.model_config(upstream.vocab_size, upstream.seq_len)
    ds_config = load_ds_config(ds_config_path)
    identity = cfg.identity(upstream.vocab_size, upstream.seq_len, upstream.tokenizer["identity"])
    init = _checked_start(cfg, upstream, identity, universal)

    env = init_distributed(local_rank, cfg.dist_timeout_s)
    run_dir = Path(cfg.run_dir)
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    data.clean_stale_shared_memory()
    ds_config = patch_ds_config(ds_config, cfg, env.world_size, env.device.type == "cuda")
    if universal:
        ds_config.setdefault("checkpoint", {})["load_universal"] = True
    log_prior = upstream.unigram_log_prior() if cfg.head_init == "unigram" and init is None else None
    engine, n_params = build_engine(cfg, model_cfg, ds_config, env, init=init, log_prior=log_prior)
    kernel, objective, posterior = _objective(cfg, model_cfg, upstream, engine, env.device)

    check_indexes(upstream)  # a stale cache is refused before streaming reads it ...
    dataset, loader = data.build_train_loader(data_spec, cfg.micro_batch, cfg.shuffle_seed, cfg.num_canonical_nodes,
                                              cfg.num_workers)
    val_set = (data.ValidationSet(data_spec, env.rank, env.world_size, cfg.micro_batch, cfg.val_batches)
               if cfg.val_every else None)
    check_indexes(upstream)  # ... and an index just downloaded must be the manifest's (not a torn upload)
    marker = {"identity": identity, "identity_hash": hash_object(identity), "tokenizer": upstream.tokenizer,
              "artifacts": upstream.references(), "posterior": posterior}
    if env.rank == 0:
        _write_run_files(cfg, run_dir, ds_config, env, dataset, data_spec)
        precision = "bf16 autocast" if ds_config["torch_autocast"]["enabled"] else "fp32"
        print(f"model {cfg.model}: {n_params['total']:,} parameters ({n_params['non_embedding']:,} non-embedding); "
              f"{'autoregressive' if model_cfg.causal else 'kernel ' + kernel.cfg.name}; "
              f"world {env.world_size} x micro {cfg.micro_batch} x accum "
              f"{cfg.accum_steps(env.world_size)} = {cfg.global_batch}; {precision}", flush=True)
    samples = None
    if cfg.sample_every and env.rank == 0 and kernel is not None:  # the AR baseline is not sampled in training
        from pipeline.training.samples import TrainingSamples

        samples = TrainingSamples(cfg, kernel, upstream.tokenizer.get("name_or_path"), upstream.seq_len, env.device)
    return Trainer(cfg, engine, objective, data.BatchStream(loader), val_set, env, run_dir, identity, marker,
                   flops_per_token(model_cfg, upstream.seq_len), upstream.seq_len, upstream.pad_id,
                   universal=universal, samples=samples)


def check_indexes(upstream) -> None:
    """Each data stream's cached split index is the one its manifest lists (pipeline/training/streams.py)."""
    from pipeline.training.streams import check_cached_index

    for split, pairs in (("train", upstream.train_streams), ("validation", upstream.validation_streams)):
        for spec, manifest in pairs:
            check_cached_index(spec, manifest, split)
