"""Reed–Solomon codes over a prime field GF(q) and exact mask predictors for the unmasking harness.

The code RS(n, k) evaluates the polynomials of degree < k over GF(q) at the n distinct points
0, 1, ..., n-1 (so n <= q). It is MDS: any k coordinates of a codeword determine it, and any
k or fewer coordinates of a uniformly random codeword are i.i.d. uniform on GF(q). Hence the exact
conditional marginals of masked positions given revealed ones are uniform while fewer than k
positions are revealed, and point masses (the interpolated codeword) from k revealed on.

Two mask predictors share the interface ``conditionals(values, revealed) -> Float[B, n, q]``:

* :class:`RSOracle` — algebraic (Lagrange interpolation), vectorised over the batch, for any size;
* :class:`TableOracle` — brute force over an explicit probability table of GF(q)^n, for any small
  distribution (the reference the algebraic oracle is tested against).

Revealed assignments that no codeword (no configuration of positive probability) explains have
no conditional; both oracles then return uniform marginals for the masked positions. Such states
can only arise after the sampler has already left the support, so the convention does not change
KL(data || sampler). Revealed positions always get a point mass on their value.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

# Enumerating q^k codewords or q^n configurations beyond this is refused (memory/time guard).
MAX_ENUMERATION = 2_000_000


def is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


@dataclass
class RSCode:
    """RS(n, k) over GF(q), q prime, evaluation points 0..n-1."""

    q: int
    n: int
    k: int
    points: torch.Tensor = field(init=False, repr=False)
    inverse: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not is_prime(self.q):
            raise ValueError(f"field size q={self.q} must be prime (only prime fields GF(q) are supported)")
        if not 1 <= self.k <= self.n <= self.q:
            raise ValueError(f"need 1 <= k <= n <= q, got q={self.q}, n={self.n}, k={self.k}")
        self.points = torch.arange(self.n, dtype=torch.long)
        # Multiplicative inverses by Fermat; inverse[0] = 0 is never used on purpose.
        self.inverse = torch.tensor([pow(a, self.q - 2, self.q) for a in range(self.q)], dtype=torch.long)

    # ----------------------------------------------------------------- matrices
    def generator_matrix(self) -> torch.Tensor:
        """G[m, i] = a_i^m (k x n): codeword = message @ G mod q."""
        return self._powers(self.points, self.k)

    def parity_check_matrix(self) -> torch.Tensor:
        """H[m, i] = v_i a_i^m (n-k x n) with v_i = 1 / prod_{j != i}(a_i - a_j): G H^T = 0 mod q."""
        q = self.q
        diffs = (self.points[:, None] - self.points[None, :]) % q
        diffs.fill_diagonal_(1)
        v = self.inverse[self._prod_mod(diffs, dim=1)]
        return (self._powers(self.points, self.n - self.k) * v[None, :]) % q

    def _powers(self, base: torch.Tensor, count: int) -> torch.Tensor:
        rows = [torch.ones_like(base)]
        for _ in range(1, count):
            rows.append((rows[-1] * base) % self.q)
        return torch.stack(rows[:count]) if count > 0 else base.new_zeros((0, base.numel()))

    def _prod_mod(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        out = torch.ones_like(x.select(dim, 0))
        for j in range(x.shape[dim]):
            out = (out * x.select(dim, j)) % self.q
        return out

    # ----------------------------------------------------------------- codewords
    def encode(self, messages: torch.Tensor) -> torch.Tensor:
        return (messages.long() @ self.generator_matrix()) % self.q

    def codebook(self) -> torch.Tensor:
        """All q^k codewords, Long[q^k, n]."""
        if self.q ** self.k > MAX_ENUMERATION:
            raise ValueError(f"q^k = {self.q ** self.k} codewords exceed the enumeration limit {MAX_ENUMERATION}")
        messages = torch.tensor(list(itertools.product(range(self.q), repeat=self.k)), dtype=torch.long)
        return self.encode(messages.reshape(-1, self.k))

    def is_codeword(self, x: torch.Tensor) -> torch.Tensor:
        """Bool[...]: parity checks H x = 0 hold (every word is a codeword when k = n)."""
        h = self.parity_check_matrix()
        if h.shape[0] == 0:
            return torch.ones(x.shape[:-1], dtype=torch.bool)
        return ((x.long() @ h.T) % self.q == 0).all(dim=-1)

    def interpolate(self, values: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """The codeword through ``values`` at the k positions ``support`` (Long[B, k]) -> Long[B, n].

        Lagrange: c_j = sum_m x_{p_m} prod_{l != m} (a_j - a_{p_l}) / (a_{p_m} - a_{p_l}).
        """
        q, k = self.q, self.k
        p = self.points[support]                                        # [B, k]
        x = values.gather(1, support)                                   # [B, k]
        target = (self.points[None, :, None] - p[:, None, :]) % q      # [B, n, k]: a_j - p_l
        pair = (p[:, :, None] - p[:, None, :]) % q                      # [B, k, k]: p_m - p_l
        pair = pair.masked_fill(torch.eye(k, dtype=torch.bool), 1)
        denominators = self._prod_mod(pair, dim=2)                      # [B, k]: prod_{l != m}(p_m - p_l)
        full = self._prod_mod(target, dim=2)                            # [B, n]: prod_l (a_j - p_l)
        # prod_{l != m}(a_j - p_l) = full / (a_j - p_m); at a_j = p_m it is the denominator itself.
        at_point = target == 0
        numer = torch.where(at_point, denominators[:, None, :], (full[:, :, None] * self.inverse[target]) % q)
        weights = (numer * self.inverse[denominators][:, None, :]) % q
        return ((weights * x[:, None, :]) % q).sum(-1) % q


class RSOracle:
    """Exact conditional marginals of the uniform distribution over an RS code (algebraic)."""

    def __init__(self, code: RSCode):
        self.code = code

    def conditionals(self, values: torch.Tensor, revealed: torch.Tensor) -> torch.Tensor:
        code = self.code
        batch, n = values.shape
        out = torch.full((batch, n, code.q), 1.0 / code.q, dtype=torch.float64)
        enough = revealed.sum(1) >= code.k
        if enough.any():
            rows = enough.nonzero().squeeze(1)
            rev, val = revealed[rows], values[rows].long()
            # The first k revealed positions (by index) determine the codeword (MDS).
            support = (~rev).to(torch.int8).argsort(dim=1, stable=True)[:, :code.k]
            word = code.interpolate(val, support)
            consistent = ((word == val) | ~rev).all(1)
            good = rows[consistent]
            out[good] = torch.nn.functional.one_hot(word[consistent], code.q).to(torch.float64)
        return _pin_revealed(out, values, revealed)


class TableOracle:
    """Exact conditional marginals of an explicit distribution over GF(q)^n (brute force)."""

    def __init__(self, probs: torch.Tensor, q: int, chunk: int = 256):
        probs = probs.reshape(-1).to(torch.float64)
        n = round(torch.log(torch.tensor(float(probs.numel()))).item() / torch.log(torch.tensor(float(q))).item())
        if q ** n != probs.numel() or probs.numel() > MAX_ENUMERATION:
            raise ValueError(f"table of {probs.numel()} entries is not q^n for q={q} within the limit")
        self.q, self.n, self.probs, self.chunk = q, n, probs, chunk
        self.configs = all_configurations(q, n)

    def conditionals(self, values: torch.Tensor, revealed: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, values.shape[0], self.chunk):
            v, r = values[start:start + self.chunk], revealed[start:start + self.chunk]
            match = ((self.configs[None] == v[:, None, :]) | ~r[:, None, :]).all(-1)   # [b, q^n]
            w = self.probs[None, :] * match                                             # [b, q^n]
            onehot = torch.nn.functional.one_hot(self.configs, self.q).to(torch.float64)  # [q^n, n, q]
            marg = torch.einsum("bc,cnq->bnq", w, onehot)
            total = w.sum(1)
            marg = torch.where(total[:, None, None] > 0, marg / total.clamp_min(1e-300)[:, None, None],
                               torch.full_like(marg, 1.0 / self.q))
            outs.append(marg)
        return _pin_revealed(torch.cat(outs), values, revealed)


def all_configurations(q: int, n: int) -> torch.Tensor:
    """Long[q^n, n], row index = base-q number with position 0 most significant."""
    if q ** n > MAX_ENUMERATION:
        raise ValueError(f"q^n = {q ** n} exceeds the enumeration limit {MAX_ENUMERATION}")
    idx = torch.arange(q ** n, dtype=torch.long)
    digits = [(idx // q ** (n - 1 - i)) % q for i in range(n)]
    return torch.stack(digits, dim=1) if n else torch.zeros((1, 0), dtype=torch.long)


def code_distribution(code: RSCode) -> torch.Tensor:
    """Uniform distribution over the codewords as a dense Float64[q^n] table (row order of all_configurations)."""
    words = code.codebook()
    weights = code.q ** torch.arange(code.n - 1, -1, -1, dtype=torch.long)
    probs = torch.zeros(code.q ** code.n, dtype=torch.float64)
    probs[(words * weights).sum(1)] = 1.0 / words.shape[0]
    return probs


def _pin_revealed(out: torch.Tensor, values: torch.Tensor, revealed: torch.Tensor) -> torch.Tensor:
    pinned = torch.nn.functional.one_hot(values.long().clamp(0, out.shape[-1] - 1), out.shape[-1]).to(out.dtype)
    return torch.where(revealed[..., None], pinned, out)
