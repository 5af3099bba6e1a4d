"""Forward transition kernels q_t(x_t | x_0) of the diffusion core (paper Sec 2, Sec 4.2, App C, E.1).

Every kernel is one instance of the *branch form*

    q_t(j | v) = alpha_t delta(j, v) + lam_t s_t(rank_v(j) | v) 1[j in N(v)] + beta_t nu(j),

with a self branch (retention alpha_t), a local branch over the stored neighbour table N(v)
(a distribution s_t over the ranks of v's row) and a global branch (weight beta_t, fixed
distribution nu), lam_t = 1 - alpha_t - beta_t:

========================  ============  ==========================  =====================================
kernel                    alpha_t       local branch                global branch
========================  ============  ==========================  =====================================
``mask`` (Eq 5)           schedule      none                        beta = 1 - alpha, nu = delta([MASK])
``uniform`` (Eq 6)        schedule      none                        beta = 1 - alpha, nu = U(V)
``semdlm`` (Eq 7/103)     schedule      U(top-k_t), k_t of Eq 118   none
``semdlm_softmax`` (Eq 8) schedule      softmax(sim / tau_t), top   none
                                        k_max of the table
``semdlm_plus`` (Eq 117)  Eq 118        U(top-k_t), self excluded   beta_t of Eq 118 (+ mass beyond the
                                                                    table), nu = U(valid) or unigram
========================  ============  ==========================  =====================================

The samplers and the likelihood bound (pipeline/core/likelihood.py) only use this form. A new kernel
is a row here: its branches in :func:`build_kernel`, its schedule in :func:`alpha_of` /
:func:`beta_of`, and its traits on :class:`KernelConfig` (``needs_neighbors``, ``continuous_bounds``),
which the rest of the pipeline reads instead of kernel names. Every stage builds kernels through
:func:`make_kernel`. Fractional k_t: see schedules.fractional_knn_probs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.core import schedules as sch
from pipeline.core.kernel_config import (  # noqa: F401 - the config side is re-exported for callers
    GLOBAL_BRANCHES,
    KERNEL_NAMES,
    PRESETS,
    SCHEDULE_CHECK_GRID,
    KernelConfig,
    KernelTraits,
    alpha_and_derivative,
    alpha_of,
    beta_of,
    traits_of,
)


class SparseMarginal(NamedTuple):
    """q_t(j|x0) = self_prob delta(j, x0) + sum_k probs_k delta(j, ids_k) + global_weight global_dist(j)."""

    self_prob: torch.Tensor  # [...]
    ids: torch.Tensor  # [..., K] (K = 0 for kernels without a local branch)
    probs: torch.Tensor  # [..., K]
    global_weight: torch.Tensor  # [...]
    global_dist: torch.Tensor  # [V]

    def dense(self, x0_ids: torch.Tensor) -> torch.Tensor:
        """The rows as dense [N, V] for flat ``x0_ids`` [N] (also for a time derivative in this form)."""
        rows = self.global_weight.unsqueeze(-1) * self.global_dist
        rows = rows.scatter_add(-1, self.ids, self.probs)
        return rows.scatter_add(-1, x0_ids.unsqueeze(-1), self.self_prob.unsqueeze(-1))


class Kernel:
    """A configured kernel with its tables on one device; build it with :func:`build_kernel`."""

    def __init__(self, cfg: KernelConfig, vocab_size: int, global_dist: torch.Tensor,
                 neighbors: torch.Tensor, similarities: torch.Tensor | None,
                 data_prior: torch.Tensor, table_ranks: int, mask_id: int | None = None):
        self.cfg = cfg
        self.mask_id = mask_id  # [MASK] id (mask kernel; informational for the others)
        self.vocab_size = vocab_size
        self.global_dist = global_dist  # [V] float64, sums to 1 (nu)
        self.neighbors = neighbors  # [V, K] long, K ranks used by the local branch (K = 0: none)
        self.similarities = similarities  # [V, K] (softmax kernel only)
        self.data_prior = data_prior  # [V] weights of x0 used to form the reference distribution
        self.table_ranks = table_ranks  # ranks actually stored (< k_max: the rest goes global)
        self.device = global_dist.device
        self._global_cdf = torch.cumsum(global_dist, 0)
        self._prior: torch.Tensor | None = None
        self._build_inverse_table()

    # ------------------------------------------------------------------ schedules
    @property
    def num_ranks(self) -> int:
        return self.neighbors.shape[1]

    def alpha(self, t) -> torch.Tensor:
        """Self-retention probability alpha_t."""
        return alpha_of(self.cfg, torch.as_tensor(t, dtype=torch.float64, device=self.device))

    def branch_weights(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, beta_t, lam_t) of the branch form, with mass beyond the stored table in beta_t."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device)
        alpha, beta = alpha_of(self.cfg, t), beta_of(self.cfg, t)
        lam = (1.0 - alpha - beta).clamp_min(0.0)
        if self.num_ranks == 0:
            return alpha, beta, torch.zeros_like(lam)
        beyond = self._mass_beyond_table(t)
        return alpha, beta + lam * beyond, lam * (1.0 - beyond)

    def _mass_beyond_table(self, t: torch.Tensor) -> torch.Tensor:
        """Share of U(top-k_t) on ranks past the stored table (SemDLM+ only; App E.1)."""
        if not self.cfg.traits.absorbs_missing_ranks or self.table_ranks >= self.cfg.k_max:
            return torch.zeros_like(t)
        k_t = sch.neighborhood_size(t, self.cfg.k_max, self.cfg.k_power)
        return 1.0 - sch.fractional_knn_probs(k_t, self.table_ranks).sum(-1)

    def rank_probs(self, t, v: torch.Tensor | None = None) -> torch.Tensor:
        """s_t over the K ranks of the local branch, [..., K], normalised within the stored table.

        For the kNN kernels it depends on t only (``v`` is ignored, the result broadcasts over v);
        for ``semdlm_softmax`` it is Eq 8 restricted to the table row of ``v``.
        """
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device)
        if self.cfg.traits.rank_weights_per_token:
            if v is None:
                v = torch.arange(self.vocab_size, device=self.device)
            return semantic_softmax(self.similarities[v], sch.inverse_temperature(
                t, self.cfg.tau_min, self.cfg.tau_power).unsqueeze(-1))
        k_t = sch.neighborhood_size(t, self.cfg.k_max, self.cfg.k_power)
        probs = sch.fractional_knn_probs(k_t, self.num_ranks)
        return probs / probs.sum(-1, keepdim=True)

    def _broadcast_t(self, t, shape) -> torch.Tensor:
        """t as float64 of ``shape``: a scalar, a tensor of that shape, or one value per batch row."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device)
        if t.dim() == 1 and len(shape) > 1 and t.shape[0] == shape[0]:
            t = t.reshape(-1, *([1] * (len(shape) - 1)))
        return t.expand(shape)

    # ------------------------------------------------------------------ marginals
    def marginal_sparse(self, x0: torch.Tensor, t) -> SparseMarginal:
        """q_t(. | x0) in sparse form (Eq 5/6/103/8/117 depending on the kernel)."""
        t = self._broadcast_t(t, x0.shape)
        alpha, beta, lam = self.branch_weights(t)
        ids = self.neighbors[x0]
        probs = lam.unsqueeze(-1) * self.rank_probs(t, x0).expand(*x0.shape, self.num_ranks)
        return SparseMarginal(alpha, ids, probs, beta, self.global_dist)

    def marginal_rows(self, x0_ids: torch.Tensor, t) -> torch.Tensor:
        """Dense q_t(. | x0) rows, [N, V] (tests and diagnostics: small V or chunks)."""
        return self.marginal_sparse(x0_ids, t).dense(x0_ids)

    def likelihood_of(self, xt: torch.Tensor, t) -> torch.Tensor:
        """q_t(xt | x0 = v) for every candidate clean token v: [..., V]."""
        shape = xt.shape
        z = xt.reshape(-1)
        t = self._broadcast_t(t, shape).reshape(-1)
        alpha, beta, lam = self.branch_weights(t)

        def local_at(n, v, a):
            return lam[n] * self.rank_probs(t[n], v).gather(-1, a.unsqueeze(-1)).squeeze(-1)

        return self._by_clean_token(z, alpha, beta, local_at).reshape(*shape, self.vocab_size)

    def _by_clean_token(self, z: torch.Tensor, self_weight: torch.Tensor, global_weight: torch.Tensor,
                        local_at) -> torch.Tensor:
        """[N, V]: column v = self_weight delta(z, v) + global_weight nu(z) + local_at(n, v, a) where z_n = N(v)[a]
        (a row form q_t(z | v) or its time derivative, by branch)."""
        out = (global_weight * self.global_dist[z]).unsqueeze(-1).repeat(1, self.vocab_size)
        out.scatter_add_(1, z.unsqueeze(-1), self_weight.unsqueeze(-1))
        if self.num_ranks:
            n, v, a = self.inverse_entries(z)
            out.index_put_((n, v), local_at(n, v, a), accumulate=True)
        return out

    # ------------------------------------------------------------------ time derivatives (continuous-time ELBO)
    def _derivative(self, fn, t):
        """(fn(t), d fn / dt) by forward-mode AD; fn must be elementwise in t (one derivative per t entry)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device).contiguous()
        return torch.func.jvp(fn, (t,), (torch.ones_like(t),))

    def branch_weights_and_derivatives(self, t) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """((alpha_t, beta_t, lam_t), (alpha'_t, beta'_t, lam'_t)) of :meth:`branch_weights`, float64.

        d/dt by forward-mode AD through the configured schedules (including the mass beyond the stored
        table that SemDLM+ folds into beta_t, whose derivative comes from the fractional k_t). At the
        kinks of a piecewise schedule (k_t crossing an integer) it is the right derivative.
        """
        return self._derivative(self.branch_weights, t)

    def local_mass(self, t, v: torch.Tensor | None = None) -> torch.Tensor:
        """lam_t s_t(r | v): the local branch's probability of each stored rank, [..., K]."""
        _, _, lam = self.branch_weights(t)
        return lam.unsqueeze(-1) * self.rank_probs(t, v)

    def local_mass_and_derivative(self, t, v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(lam_t s_t(r | v), d/dt lam_t s_t(r | v)), each [..., K] (kNN kernels: independent of v)."""
        return self._derivative(lambda tt: self.local_mass(tt, v), t)

    def marginal_derivative_sparse(self, x0: torch.Tensor, t) -> SparseMarginal:
        """d/dt q_t(. | x0) in the sparse form of :meth:`marginal_sparse` (self, ranks, global weight)."""
        t = self._broadcast_t(t, x0.shape)
        (_, _, _), (dalpha, dbeta, _) = self.branch_weights_and_derivatives(t)
        if self.num_ranks:
            _, dlocal = self.local_mass_and_derivative(t, x0)
            dlocal = dlocal.expand(*x0.shape, self.num_ranks)
        else:
            dlocal = torch.zeros(*x0.shape, 0, dtype=torch.float64, device=self.device)
        return SparseMarginal(dalpha, self.neighbors[x0], dlocal, dbeta, self.global_dist)

    def marginal_derivative_rows(self, x0_ids: torch.Tensor, t) -> torch.Tensor:
        """Dense d/dt q_t(. | x0) rows, [N, V] (tests and diagnostics: small V or chunks)."""
        return self.marginal_derivative_sparse(x0_ids, t).dense(x0_ids)

    def likelihood_derivative_of(self, xt: torch.Tensor, t) -> torch.Tensor:
        """d/dt q_t(xt | x0 = v) for every candidate clean token v: [..., V] (cf. :meth:`likelihood_of`)."""
        shape = xt.shape
        z = xt.reshape(-1)
        t = self._broadcast_t(t, shape).reshape(-1)
        (_, _, _), (dalpha, dbeta, _) = self.branch_weights_and_derivatives(t)

        def local_at(n, v, a):
            _, dlocal = self.local_mass_and_derivative(t[n], v)
            return dlocal.expand(n.numel(), self.num_ranks).gather(-1, a.unsqueeze(-1)).squeeze(-1)

        return self._by_clean_token(z, dalpha, dbeta, local_at).reshape(*shape, self.vocab_size)

    # ------------------------------------------------------------------ sampling
    def sample_xt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t ~ q_t(. | x0) for x0 [B, L] and t [B]; returns (xt, changed = xt != x0)."""
        t = self._broadcast_t(t, x0.shape)
        alpha, beta, _ = self.branch_weights(t)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        clean, to_global = u < alpha, u >= 1.0 - beta
        xt = x0.clone()
        if self.num_ranks:
            local = ~clean & ~to_global
            cdf = torch.cumsum(self.rank_probs(t[local], x0[local]).expand(int(local.sum()), self.num_ranks), -1)
            u_rank = torch.rand(cdf.shape[:-1], generator=generator, device=x0.device, dtype=torch.float64)
            rank = (cdf <= u_rank.unsqueeze(-1) * cdf[..., -1:]).sum(-1).clamp_max(self.num_ranks - 1)
            xt[local] = self.neighbors[x0[local], rank]
        xt[to_global] = self._sample_global(int(to_global.sum()), generator)
        return xt, xt != x0

    def _sample_global(self, n: int, generator) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=self.device, dtype=torch.float64)
        idx = torch.searchsorted(self._global_cdf, u * self._global_cdf[-1], right=True)
        return idx.clamp_max(self.vocab_size - 1)

    # ------------------------------------------------------------------ reference distribution
    def prior_probs(self) -> torch.Tensor:
        """Reference distribution pi at t = 1, [V] float64.

        When q_1(. | x0) does not depend on x0 (mask, uniform, SemDLM+ main preset) pi is exactly
        that distribution. Otherwise (semdlm, or alpha_min > 0) pi = sum_v d(v) q_1(. | v) with d the
        unigram prior (else uniform over valid tokens), mixed with prior_floor U(V) so that the
        prior KL of the likelihood bound stays finite for every x0.
        """
        if self._prior is None:
            self._prior = self._compute_prior()
        return self._prior

    def _compute_prior(self) -> torch.Tensor:
        alpha, beta, lam = self.branch_weights(1.0)
        if alpha.item() == 0.0 and lam.item() == 0.0:
            return self.global_dist.clone()
        prior = alpha * self.data_prior + beta * self.global_dist
        if self.num_ranks:
            local = lam * self.data_prior.unsqueeze(-1) * self.rank_probs(1.0).expand(self.vocab_size, -1)
            prior = prior.scatter_add(0, self.neighbors.reshape(-1), local.reshape(-1))
        floor = self.cfg.prior_floor
        return (1.0 - floor) * prior / prior.sum() + floor / self.vocab_size

    def sample_prior(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws from prior_probs() of the given shape (long)."""
        shape = tuple(shape)
        cdf = torch.cumsum(self.prior_probs(), 0)
        n = 1
        for s in shape:
            n *= s
        u = torch.rand(n, generator=generator, device=self.device, dtype=torch.float64)
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max(self.vocab_size - 1).reshape(shape)

    # ------------------------------------------------------------------ inverse neighbour table
    def _build_inverse_table(self) -> None:
        """CSR of the transposed table: for each token z, the (v, rank) with neighbors[v, rank] = z."""
        V, K = self.neighbors.shape
        flat = self.neighbors.reshape(-1)
        order = torch.argsort(flat, stable=True)
        self._inv_src = (order // max(K, 1)).to(torch.long)
        self._inv_rank = (order % max(K, 1)).to(torch.long)
        counts = torch.bincount(flat, minlength=V)
        self._inv_ptr = torch.zeros(V + 1, dtype=torch.long, device=self.device)
        self._inv_ptr[1:] = torch.cumsum(counts, 0)

    def inverse_entries(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All (n, v, rank) with neighbors[v, rank] == z[n] for a flat z [N] (vectorised CSR gather)."""
        start, end = self._inv_ptr[z], self._inv_ptr[z + 1]
        counts = end - start
        n = torch.repeat_interleave(torch.arange(z.numel(), device=z.device), counts)
        first = torch.cumsum(counts, 0) - counts
        e = start[n] + torch.arange(n.numel(), device=z.device) - first[n]
        return n, self._inv_src[e], self._inv_rank[e]


def semantic_softmax(similarities: torch.Tensor, inv_tau: torch.Tensor) -> torch.Tensor:
    """Eq 8: s_t(j | i) = exp(sim(i, j) / tau_t) / sum_k exp(sim(i, k) / tau_t), over the table row."""
    return torch.softmax(similarities.to(torch.float64) * inv_tau, dim=-1)


def build_kernel(cfg: KernelConfig, vocab_size: int, mask_id: int | None = None,
                 neighbors: torch.Tensor | None = None, valid_vocab: torch.Tensor | None = None,
                 unigram_prior: torch.Tensor | None = None, similarities: torch.Tensor | None = None,
                 device: torch.device | str | None = None) -> Kernel:
    """Validate the inputs a kernel needs and build it on ``device`` (default: the tables' device)."""
    if device is None:
        device = neighbors.device if isinstance(neighbors, torch.Tensor) else "cpu"
    as_t = (lambda x, dt: None if x is None else torch.as_tensor(x).to(device=device, dtype=dt))
    neighbors, valid_vocab = as_t(neighbors, torch.long), as_t(valid_vocab, torch.bool)
    unigram_prior, similarities = as_t(unigram_prior, torch.float64), as_t(similarities, torch.float64)
    V = int(vocab_size)
    for name, x in (("valid_vocab", valid_vocab), ("unigram_prior", unigram_prior)):
        if x is not None and x.shape != (V,):
            raise ValueError(f"{name} must have shape [{V}], got {tuple(x.shape)}")
    valid = valid_vocab if valid_vocab is not None else torch.ones(V, dtype=torch.bool, device=device)
    if not valid.any():
        raise ValueError("valid_vocab marks no token as valid")
    uniform_valid = valid.to(torch.float64) / valid.sum()
    data_prior = unigram_prior / unigram_prior.sum() if unigram_prior is not None else uniform_valid

    if cfg.absorbing:
        if mask_id is None or not 0 <= mask_id < V:
            raise ValueError(f"the mask kernel needs mask_id in [0, {V}), got {mask_id}")
        global_dist = torch.zeros(V, dtype=torch.float64, device=device)
        global_dist[mask_id] = 1.0
    elif cfg.name == "uniform":
        global_dist = torch.full((V,), 1.0 / V, dtype=torch.float64, device=device)  # Eq 6: over all of V
    elif cfg.global_branch == "unigram":
        if unigram_prior is None:
            raise ValueError("global_branch='unigram' needs unigram_prior (Eq 119)")
        if (unigram_prior < 0).any() or unigram_prior.sum() <= 0:
            raise ValueError("unigram_prior must be non-negative with positive total")
        global_dist = unigram_prior / unigram_prior.sum()
    else:
        global_dist = uniform_valid

    table = torch.zeros(V, 0, dtype=torch.long, device=device)
    sims, stored = None, 0
    if cfg.needs_neighbors:
        if neighbors is None:
            raise ValueError(f"kernel {cfg.name!r} needs the neighbour table (neighbors.npy)")
        if neighbors.dim() != 2 or neighbors.shape[0] != V:
            raise ValueError(f"neighbors must be [V={V}, k], got {tuple(neighbors.shape)}")
        if (neighbors < 0).any() or (neighbors >= V).any():
            raise ValueError("neighbors holds ids outside [0, V): every row must be full")
        if (neighbors == torch.arange(V, device=device).unsqueeze(1)).any():
            raise ValueError("neighbors lists a token as its own neighbour; self must be excluded")
        stored = neighbors.shape[1]
        if cfg.k_max > stored and not cfg.traits.absorbs_missing_ranks:
            raise ValueError(f"k_max={cfg.k_max} exceeds the stored table width {stored}; only "
                             "semdlm_plus can absorb the missing mass into its global branch")
        stored = min(stored, cfg.k_max)
        table = neighbors[:, :stored].contiguous()
        if cfg.traits.rank_weights_per_token:
            if similarities is None or similarities.shape[0] != V:
                raise ValueError("semdlm_softmax needs similarities [V, k] (similarities.npy)")
            sims = similarities[:, :stored].contiguous()
    kernel = Kernel(cfg, V, global_dist, table, sims, data_prior, stored, mask_id)
    if stored and cfg.k_max > stored:
        _check_folded_schedule(kernel)
    return kernel


def make_kernel(cfg: KernelConfig, vocab_size: int, mask_id: int | None, tables=None,
                device: torch.device | str = "cpu") -> Kernel:
    """The kernel factory every stage uses (training, export, sampling, diagnostics).

    ``tables`` is a ``pipeline.common.neighbor_artifact.NeighborTables`` (or None): its neighbour
    table is passed when the kernel needs one; its valid vocabulary and unigram prior always (a
    unigram global branch and the data prior use them).
    """
    extra = tables.kernel_inputs(device) if tables is not None else {}
    if not cfg.needs_neighbors:
        extra.pop("neighbors", None)
        extra.pop("similarities", None)
    return build_kernel(cfg, vocab_size, mask_id=mask_id, device=device, **extra)


def _check_folded_schedule(kernel: Kernel) -> None:
    """Folding the mass beyond the table into beta_t must keep beta_t non-decreasing (the bound's coupling)."""
    t = torch.linspace(0.0, 1.0, SCHEDULE_CHECK_GRID, dtype=torch.float64, device=kernel.device)
    _, beta, _ = kernel.branch_weights(t)
    if (beta[1:] < beta[:-1] - 1e-9).any():
        raise ValueError(f"k_max={kernel.cfg.k_max} with a stored table of {kernel.table_ranks} ranks makes the "
                         "effective global weight decrease in t; store more neighbours or lower k_max")
