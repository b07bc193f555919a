"""SG-LoRA's generator: a conditional VAE over a bank of expert LoRAs, conditioned on the experts chosen
for a new user, sampled from its learned prior.

    gen = LoRAGenerator().fit(experts, neighbours)      # neighbours[i]: (rows, weights) chosen for expert i
    lora, info = gen.generate(rows, weights, rank=8)    # rows, weights: the experts chosen for a new user

The space. LoRA factors are not comparable across experts (B A = (B M)(M⁻¹ A) for any invertible M),
their updates are. With the Frobenius inner product summed over modules,

    G_ij = Σ_modules ⟨ΔW_i, ΔW_j⟩ = Σ_modules s_i s_j tr((B_iᵀ B_j)(A_j A_iᵀ))       (n, n), r×r products only

and linear PCA of the centred Gram matrix H G H = V Λ Vᵀ (H = I − 11ᵀ/n) gives each expert coordinates
x_i = (V Λ^½)_i ∈ R^p (p ≤ n − 1) whose Euclidean distances are the Frobenius distances of the updates.
A point x maps back into the bank's affine span, ΔW(x) = Σ_j c_j ΔW_j with c = 1/n + H V Λ^-½ x
(Σ c_j = 1; c = e_i at x = x_i), which ``combine`` writes as one LoRA: the generator never holds a
vector of the model's size.

The model (SG-LoRA §3). The condition is the chosen experts' weighted mean m and weighted variance v
of coordinates, c = [m, v]; encoder q(z | x, c), learned prior p(z | c), decoder x̂ = m + g(z, c): the
residual, so a decoder that learned nothing returns the top-K blend. It is trained on the bank itself,
expert i's condition built from experts chosen among the *others* (as a new user's is), with

    loss = ‖x − x̂‖² + β · KL(q(z | x, c) ‖ p(z | c))      (coordinates scaled to unit mean square)

and at inference z is drawn from p(z | c) (``sample=False``: its mean).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from parsona.errors import ConfigError

from ..peft_format import LoRAWeights
from .blend import check_experts, combine, compact


class LoRAGenerator:
    """A conditional VAE over the coordinates of a bank's expert updates (scikit-learn style: ``fit``, then
    ``generate``; learned state ends in ``_``)."""

    def __init__(self, latent_dim: int = 4, hidden: int = 64, beta: float = 1.0, steps: int = 1000,
                 learning_rate: float = 1e-2, seed: int = 0):
        self.latent_dim, self.hidden, self.beta = latent_dim, hidden, beta
        self.steps, self.learning_rate, self.seed = steps, learning_rate, seed

    def fit(self, experts: Sequence[LoRAWeights], neighbours: Sequence[tuple]) -> "LoRAGenerator":
        """``neighbours[i]`` = (rows, weights): the experts chosen for expert i, never i itself."""
        check_experts(experts)
        n = len(experts)
        if n < 3:
            raise ConfigError("experts", "Give a bank of at least 3 experts (each is learned from the others).",
                              problem=f"got {n}")
        if len(neighbours) != n or any(i in np.asarray(rows).tolist() for i, (rows, _) in enumerate(neighbours)):
            raise ConfigError("neighbours", "Give, for each expert, the other experts chosen for it (never itself).",
                              problem=f"{len(neighbours)} entries for {n} experts, or an expert chosen for itself")
        self.experts_ = list(experts)
        self.coords_, self.to_coefficients_ = _pca(gram(experts))                  # (n, p), (n, p)
        self.unit_ = float(np.sqrt((self.coords_ ** 2).sum(1).mean())) or 1.0     # coordinates in units of it
        X = torch.tensor(self.coords_ / self.unit_, dtype=torch.float32)           # (n, p)
        C = torch.stack([self._condition(rows, w) for rows, w in neighbours])      # (n, 2p)
        with torch.random.fork_rng(devices=[]):                                  # a seeded init; the CPU RNG restored
            torch.default_generator.manual_seed(self.seed)
            self.net_ = _CVAE(X.shape[1], self.latent_dim, self.hidden)
        self.losses_ = self._train(X, C, torch.Generator().manual_seed(self.seed))
        return self

    def _train(self, X: torch.Tensor, C: torch.Tensor, generator: torch.Generator) -> list[float]:
        """Full-batch Adam on the bank (n rows); the loss of every step."""
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.learning_rate)
        losses = []
        for _ in range(self.steps):
            x_hat, kl = self.net_(X, C, generator)
            loss = (x_hat - X).square().sum(1).mean() + self.beta * kl.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    def coefficients(self, rows, weights, sample: bool = True, seed: int | None = None) -> np.ndarray:
        """(n,) c with Σ c = 1: the generated update Σ c_j ΔW_j for the chosen experts ``rows`` and ``weights``."""
        c = self._condition(rows, weights)[None]                                  # (1, 2p)
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        with torch.no_grad():
            x = self.net_.generate(c, sample, generator)[0].double().numpy() * self.unit_   # (p,)
        return 1.0 / len(self.experts_) + self.to_coefficients_ @ x

    def generate(self, rows, weights, rank: int | None = None, sample: bool = True, seed: int | None = None):
        """(LoRAWeights, info): the generated LoRA (rank Σ r_i, or its best rank-``rank`` approximation)."""
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise ConfigError("rank", "Use a whole number ≥ 1.", problem=f"got {rank!r}")
        c = self.coefficients(rows, weights, sample, seed)
        lora = combine(self.experts_, torch.as_tensor(c))
        info = {"coefficients": c.tolist()}
        if rank is None:
            return lora, info
        small, errors = compact(lora, rank)
        return small, {**info, "max_relative_error": max(errors.values())}

    def _condition(self, rows, weights) -> torch.Tensor:
        """[weighted mean, weighted variance] of the chosen experts' coordinates: (2p,)."""
        rows, w = np.asarray(rows, dtype=int), np.asarray(weights, dtype=np.float64)
        if rows.ndim != 1 or len(rows) == 0 or w.shape != rows.shape or (rows < 0).any() or (rows >= len(self.coords_)).any():
            raise ConfigError("rows", f"Choose 1 or more experts by row (0..{len(self.coords_) - 1}), one weight each.",
                              problem=f"rows {rows.tolist()!r:.60}, weights shape {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any() or abs(w.sum() - 1) > 1e-6:
            raise ConfigError("weights", "Give weights ≥ 0 that sum to 1.", problem=f"got {w.tolist()!r:.80}")
        X = self.coords_[rows] / self.unit_                                       # (k, p)
        mean = w @ X
        var = w @ (X - mean) ** 2
        return torch.tensor(np.concatenate([mean, var]), dtype=torch.float32)


def gram(experts: Sequence[LoRAWeights]) -> np.ndarray:
    """(n, n) Σ over modules of ⟨ΔW_i, ΔW_j⟩_F, from r×r products (ΔW is never formed)."""
    n = len(experts)
    G = torch.zeros(n, n, dtype=torch.float64)
    for path in experts[0].factors:
        A = [e.factors[path][0].double() for e in experts]                      # (r_i, d_in)
        B = [e.factors[path][1].double() * e.scale for e in experts]            # (d_out, r_i)
        for i in range(n):
            for j in range(i, n):
                G[i, j] += torch.trace((B[i].T @ B[j]) @ (A[j] @ A[i].T))
    return (torch.triu(G) + torch.triu(G, 1).T).numpy()


def _pca(G: np.ndarray, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Linear PCA from a Gram matrix: (coordinates (n, p), the map x -> c − 1/n as (n, p))."""
    n = len(G)
    H = np.eye(n) - 1.0 / n
    lam, V = np.linalg.eigh(H @ G @ H)
    keep = lam > rtol * max(lam.max(), 1e-300)
    lam, V = lam[keep][::-1], V[:, keep][:, ::-1]                              # largest first
    return V * np.sqrt(lam), H @ V / np.sqrt(lam)


class _CVAE(nn.Module):
    def __init__(self, p: int, latent: int, hidden: int):
        super().__init__()
        self.encoder = _mlp(p + 2 * p, hidden, 2 * latent)                    # q(z | x, c)
        self.prior = _mlp(2 * p, hidden, 2 * latent)                          # p(z | c)
        self.decoder = _mlp(latent + 2 * p, hidden, p)                        # g(z, c)
        nn.init.zeros_(self.decoder[-1].weight)                               # g = 0 at init: x̂ = the blend
        nn.init.zeros_(self.decoder[-1].bias)
        self.p = p

    def forward(self, x: torch.Tensor, c: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mu_q, logvar_q = self.encoder(torch.cat([x, c], 1)).chunk(2, 1)
        mu_p, logvar_p = self.prior(c).chunk(2, 1)
        z = mu_q + torch.randn(mu_q.shape, generator=generator) * (0.5 * logvar_q).exp()   # reparameterised sample of q
        kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(1)
        return c[:, : self.p] + self.decoder(torch.cat([z, c], 1)), kl

    def generate(self, c: torch.Tensor, sample: bool, generator: torch.Generator) -> torch.Tensor:
        mu_p, logvar_p = self.prior(c).chunk(2, 1)
        z = mu_p + torch.randn(mu_p.shape, generator=generator) * (0.5 * logvar_p).exp() if sample else mu_p
        return c[:, : self.p] + self.decoder(torch.cat([z, c], 1))


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))
