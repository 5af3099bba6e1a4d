"""The denoising backbone: a DiT-style transformer as in MDLM / BD3-LM, and an autoregressive baseline.

One readable file in the spirit of nanoGPT. Architecture (MDLM's ``DIT``, Sahoo et al. 2024; BD3-LM's
small model, Arriola et al. 2025; the paper's Appendix E.1 "Model setup"):

* token embedding -> ``n_layer`` pre-LN blocks -> final (adaLN-modulated) LayerNorm -> output layer;
* rotary position embeddings on queries and keys, no learned positions;
* attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash / mem-efficient kernels
  on GPU), bidirectional for diffusion, causal for the autoregressive baseline;
* adaLN-zero time conditioning (DiT, Peebles & Xie 2023): a sinusoidal embedding of t goes through an
  MLP to a ``cond_dim`` vector c; every block computes (shift, scale, gate) for its attention and MLP
  branches from c with a linear layer initialised to zero, so at init every block is the identity.
  ``time_conditioning=False`` is MDLM's no-time-conditioning variant (t is replaced by 0, the
  modulation collapses to learned constants); ``adaln=False`` removes the modulation altogether
  (plain pre-LN blocks). BD3-LM's configs carry an ``adaln`` flag, but its diffusion DiT ignores
  it: BD3-LM's small model always has adaLN (139.3 M parameters untied, as ``small`` here);
* LayerNorm without bias computed in float32 (as MDLM), residual dropout, GELU(tanh) MLP;
* output layer untied (MDLM: a zero-initialised Linear, so the initial prediction is uniform) or tied
  to the token embedding (plus a zero-initialised bias); ``build_model(cfg, log_prior)`` starts the bias
  at a prior instead and the weight small and random (training's ``head_init: unigram``: the first
  prediction is the data's token frequencies; ``start_output_at``);
* ``activation_checkpointing``: in training, every block's activations are recomputed in the backward
  instead of stored (``torch.utils.checkpoint``, non-reentrant; dropout masks are replayed, so outputs and
  gradients are those of the plain model). It trades one more forward per block for memory: an
  execution choice, not part of the architecture (``ModelConfig.EXECUTION_FIELDS``: a run may switch it
  on resume).

Logits are returned in float32 even under bf16 autocast (likelihoods are computed from them).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

BERT_VOCAB_SIZE = 30522


# --------------------------------------------------------------------------- configuration
@dataclass
class ModelConfig:
    vocab_size: int = BERT_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    cond_dim: int = 128           # width of the time-conditioning vector c (MDLM: 128)
    mlp_ratio: int = 4
    dropout: float = 0.1          # residual dropout (MDLM: 0.1)
    max_seq_len: int = 1024       # length of the precomputed rotary table
    rope_base: float = 10000.0
    adaln: bool = True            # adaLN-zero modulation present at all
    time_conditioning: bool = True  # False: t is ignored (fed as 0), MDLM's variant
    tie_embeddings: bool = False
    causal: bool = False          # causal attention: the autoregressive baseline
    fp32_head: bool = False       # run the output matmul in float32 even under autocast (exact eval)
    freq_embed_dim: int = 256     # sinusoidal features of t before the conditioning MLP
    time_scale: float = 1000.0    # t in [0, 1] is scaled like DiT's integer timesteps so the
                                  # sinusoidal features actually vary over the unit interval
    activation_checkpointing: bool = False  # recompute block activations in the backward (training only)

    # Fields that change how the model is computed, not what it computes (left out of checkpoint identities).
    EXECUTION_FIELDS = ("activation_checkpointing",)

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "cond_dim", "mlp_ratio",
                     "max_seq_len", "freq_embed_dim"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % max(self.n_head, 1):
            problems.append(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        elif (self.d_model // max(self.n_head, 1)) % 2:
            problems.append(f"head dim {self.d_model // self.n_head} must be even for rotary embeddings")
        if self.freq_embed_dim % 2:
            problems.append(f"freq_embed_dim must be even, got {self.freq_embed_dim}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_base <= 1.0:
            problems.append(f"rope_base must be > 1, got {self.rope_base}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def conditioned(self) -> bool:
        """Whether the network depends on t at all (never for the causal AR baseline)."""
        return self.adaln and self.time_conditioning and not self.causal

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """``small``: MDLM / BD3-LM small (12 layers, 768 hidden, 12 heads); ``tiny``: tests and demo."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        unknown = set(overrides) - set(asdict(PRESETS[name]))
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def architecture_dict(self) -> dict:
        """``to_dict`` without the execution fields: what a checkpoint of this model must agree on."""
        return {k: v for k, v in asdict(self).items() if k not in self.EXECUTION_FIELDS}


PRESETS: dict[str, ModelConfig] = {
    "small": ModelConfig(),
    "tiny": ModelConfig(vocab_size=64, n_layer=2, n_head=4, d_model=64, cond_dim=32,
                        max_seq_len=256, freq_embed_dim=32, dropout=0.0),
}


# The untied head's weight std when the output starts at a prior (start_output_at): GPT-2's / nanoGPT's 0.02.
HEAD_WEIGHT_STD = 0.02


# --------------------------------------------------------------------------- building blocks
class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, always computed in float32 (as MDLM's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.layer_norm(x.float(), (x.shape[-1],))
        return (y * self.weight.float()).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """Rotary position embedding table (Su et al. 2021), rotate-half layout as in GPT-NeoX / MDLM."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)           # [L, head_dim]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k: [B, H, L, D] -> rotated q, k (computed in float32, returned in the input dtype)."""
        length = q.shape[-2]
        if length > self.cos.shape[0]:
            raise ValueError(f"sequence length {length} exceeds max_seq_len={self.cos.shape[0]}")
        cos, sin = self.cos[:length], self.sin[:length]
        qf, kf = q.float(), k.float()
        q = (qf * cos + rotate_half(qf) * sin).to(q.dtype)
        k = (kf * cos + rotate_half(kf) * sin).to(k.dtype)
        return q, k


class TimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> MLP -> c (DiT's TimestepEmbedder)."""

    def __init__(self, cond_dim: int, freq_dim: int, time_scale: float):
        super().__init__()
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * self.time_scale)[:, None] * freqs[None]
        return self.mlp(torch.cat((args.cos(), args.sin()), dim=-1))


class Block(nn.Module):
    """Pre-LN transformer block; with adaLN-zero the six modulation vectors come from c."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head, self.causal, self.dropout = cfg.n_head, cfg.causal, cfg.dropout
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * d, d))
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d) if cfg.adaln else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, rotary: Rotary,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, d = x.shape
        if self.adaLN_modulation is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
            h = modulate(self.norm1(x), shift1, scale1)
        else:
            h = self.norm1(x)
        q, k, v = self.attn_qkv(h).view(B, L, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, k)
        # An explicit mask already encodes causality (see DiffusionTransformer._attention_mask).
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           is_causal=self.causal and attn_mask is None)
        h = self.attn_out(h.transpose(1, 2).reshape(B, L, d))
        if self.adaLN_modulation is not None:
            x = x + gate1 * self.resid_drop(h)
            return x + gate2 * self.resid_drop(self.mlp(modulate(self.norm2(x), shift2, scale2)))
        x = x + self.resid_drop(h)
        return x + self.resid_drop(self.mlp(self.norm2(x)))


# --------------------------------------------------------------------------- the model
class DiffusionTransformer(nn.Module):
    """forward(x_t: Long[B, L], t: Float[B], attention_mask: Bool[B, L] | None) -> logits Float[B, L, V].

    ``attention_mask`` is True at real tokens; padded keys are hidden from every query.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.time_embed = TimestepEmbedder(cfg.cond_dim, cfg.freq_embed_dim, cfg.time_scale) if cfg.adaln else None
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_final = LayerNorm(cfg.d_model)
        self.final_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.d_model) if cfg.adaln else None
        if cfg.tie_embeddings:
            self.head = None
            self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        else:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        # 0, or -inf at tokens that are never clean (pipeline/core/posterior.py): added to the head's bias,
        # so f = 0 there at no per-position cost. Not a weight: exports record the support in config.json.
        self.register_buffer("clean_bias", torch.zeros(cfg.vocab_size), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def set_clean_support(self, support: torch.Tensor | None) -> None:
        """Bool [V]: the tokens the output may put mass on (None: all); the rest get logit -inf."""
        if support is None:
            self.clean_bias.zero_()
            return
        support = torch.as_tensor(support, dtype=torch.bool, device=self.clean_bias.device)
        if support.shape != self.clean_bias.shape or not bool(support.any()):
            raise ValueError(f"a clean support must be a non-empty Bool[{self.cfg.vocab_size}]")
        self.clean_bias.copy_(torch.where(support, 0.0, -torch.inf))

    @torch.no_grad()
    def start_output_at(self, log_prior: torch.Tensor, weight_std: float = HEAD_WEIGHT_STD) -> None:
        """The output layer's bias := ``log_prior`` (finite, [V]) and an untied head's weight ~ N(0,
        ``weight_std``²) (TrainConfig.head_init = unigram): the first prediction is that distribution up to
        logits of std ~``weight_std`` · sqrt(d_model).

        Why not a zero weight as MDLM: with logits = W h + b, dL/dh = Wᵀ(p − y) is 0 while W = 0, so only W
        and b learn at first, and dL/dW = Σ (p − y) hᵀ. At a masked position h is the same vector for every
        target, and once b is the targets' unigram, Σ (p − y) ≈ 0: W gets no signal, nothing upstream does
        either, and a mask model sits at the unigram (a saddle; measured after 600 steps: 7.04 nats/token,
        6.71 with this weight, 6.55 from MDLM's all-zero start; docs/training.md)."""
        log_prior = torch.as_tensor(log_prior, dtype=torch.float32)
        if log_prior.shape != (self.cfg.vocab_size,) or not bool(torch.isfinite(log_prior).all()):
            raise ValueError(f"an output prior must be a finite Float[{self.cfg.vocab_size}]")
        (self.head_bias if self.head is None else self.head.bias).copy_(log_prior)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=weight_std)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """MDLM's init: kaiming-uniform embedding, PyTorch-default Linears, zeros for adaLN and output."""
        nn.init.kaiming_uniform_(self.embed.weight, a=math.sqrt(5))
        for module in [b.adaLN_modulation for b in self.blocks] + [self.final_modulation, self.head]:
            if module is not None:
                module.weight.zero_()
                module.bias.zero_()

    # -- helpers
    def _conditioning(self, t: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.time_embed is None:
            return None
        if t is None or not self.cfg.conditioned:
            t = torch.zeros(batch, device=device)
        elif t.shape != (batch,):
            raise ValueError(f"t must have shape [{batch}], got {tuple(t.shape)}")
        return F.silu(self.time_embed(t))

    def _attention_mask(self, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """Bool [B, 1, L, L] (True = may attend) or None for the unmasked fast path."""
        if attention_mask is None:
            return None
        allowed = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, -1)
        if self.cfg.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool,
                                           device=attention_mask.device).tril()
        # Every position may see itself, so a query with no visible key (all padding) stays finite.
        return allowed | torch.eye(length, dtype=torch.bool, device=attention_mask.device)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x_t.dim() != 2:
            raise ValueError(f"x_t must be [B, L], got shape {tuple(x_t.shape)}")
        B, L = x_t.shape
        if self.cfg.conditioned and t is None:
            raise ValueError("this model is time-conditioned: pass t of shape [B]")
        c = self._conditioning(t, B, x_t.device)
        mask = self._attention_mask(attention_mask, L)
        x = self.embed(x_t)
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, c, self.rotary, mask, use_reentrant=False)
            else:
                x = block(x, c, self.rotary, mask)
        x = self.norm_final(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        weight = self.embed.weight if self.head is None else self.head.weight
        bias = (self.head_bias if self.head is None else self.head.bias) + self.clean_bias
        if self.cfg.fp32_head:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return F.linear(x.float(), weight.float(), bias.float())
        return F.linear(x, weight, bias).float()


class AutoregressiveLM(nn.Module):
    """The autoregressive baseline: the same backbone with causal attention and no time input.

    ``forward(x)[:, i]`` are the logits of token i + 1 given tokens <= i.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.causal:
            raise ValueError("AutoregressiveLM needs ModelConfig(causal=True)")
        self.cfg = cfg
        self.backbone = DiffusionTransformer(cfg)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(x, None, attention_mask)


def build_model(cfg: ModelConfig, log_prior: torch.Tensor | None = None) -> nn.Module:
    """The model of ``cfg``; its output starts at ``log_prior`` when one is given (start_output_at)."""
    model = AutoregressiveLM(cfg) if cfg.causal else DiffusionTransformer(cfg)
    if log_prior is not None:
        (model.backbone if cfg.causal else model).start_output_at(log_prior)
    return model


# --------------------------------------------------------------------------- accounting
def count_parameters(model: nn.Module) -> dict[str, int]:
    """``total`` parameters and ``non_embedding`` = total minus the vocabulary matrices (Kaplan et al.)."""
    backbone = model.backbone if isinstance(model, AutoregressiveLM) else model
    total = sum(p.numel() for p in model.parameters())
    vocab_matrices = backbone.embed.weight.numel()
    if backbone.head is not None:
        vocab_matrices += backbone.head.weight.numel()
    return {"total": total, "non_embedding": total - vocab_matrices}


def parameter_count_formula(cfg: ModelConfig) -> dict[str, int]:
    """The same counts as :func:`count_parameters`, from the config alone (closed form)."""
    d, V, c, h = cfg.d_model, cfg.vocab_size, cfg.cond_dim, cfg.mlp_ratio * cfg.d_model
    per_block = (3 * d * d) + (d * d) + 2 * d + (d * h + h) + (h * d + d)   # qkv, out, 2 norms, MLP
    if cfg.adaln:
        per_block += c * 6 * d + 6 * d
    total = V * d + cfg.n_layer * per_block + d                            # embedding, blocks, final norm
    if cfg.adaln:
        f = cfg.freq_embed_dim
        total += (f * c + c) + (c * c + c) + (c * 2 * d + 2 * d)           # time MLP, final modulation
    total += V if cfg.tie_embeddings else V * d + V                        # output (bias only if tied)
    vocab_matrices = V * d if cfg.tie_embeddings else 2 * V * d
    return {"total": total, "non_embedding": total - vocab_matrices}


def conditioning_parameters(cfg: ModelConfig) -> int:
    """Parameters of the time-conditioning path (time MLP, every adaLN modulation, the final modulation).

    They multiply the per-sequence vector c: once per sequence, not once per token (7.4 M of ``small``'s
    139 M; counting them per token overstates its FLOPs by 6 %).
    """
    if not cfg.adaln:
        return 0
    d, c, f = cfg.d_model, cfg.cond_dim, cfg.freq_embed_dim
    return (f * c + c) + (c * c + c) + cfg.n_layer * (c * 6 * d + 6 * d) + (c * 2 * d + 2 * d)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 n_layer d L (Chowdhery et al. 2022, PaLM App. B), forward + backward.

    N counts the parameters that take part in per-token matrix multiplies: everything except the input
    embedding lookup (with tied weights the shared matrix is still the output matmul, so it counts) and
    the conditioning path, whose 6 N_c FLOPs are spent once per sequence (6 N_c / L per token; see
    :func:`conditioning_parameters`). 12 n_layer d L is bidirectional attention (QK^T and AV). Checked
    against ``torch.utils.flop_counter`` in tests/unit/test_model.py. MFU = tokens/s * this / peak FLOP/s.
    """
    counts = parameter_count_formula(cfg)
    n_matmul = counts["total"] - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    n_cond = conditioning_parameters(cfg)
    return 6.0 * (n_matmul - n_cond) + 6.0 * n_cond / seq_len + 12.0 * cfg.n_layer * cfg.d_model * seq_len
