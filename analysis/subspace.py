"""Subspace maths of trained LoRA adapters (LoRA, Hu et al. 2021, §7.2–7.3): which directions two
adapters share, how many more than random subspaces would, and how strongly ΔW amplifies directions
of the frozen weight W. Pure functions of tensors, computed on the CPU in float64 with
``torch.linalg.svd``; no I/O.

Shapes follow peft: ``A`` (lora_A.weight) is r×k, ``B`` (lora_B.weight) is d×r, ΔW = s·B·A is d×k
with s = lora_alpha/r (or lora_alpha/√r for rsLoRA) and W (d×k) the frozen weight. Subspaces are
compared through orthonormal bases, n×i matrices whose columns are unit vectors of ℝⁿ.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from scipy import stats


def right_singular_basis(a: torch.Tensor) -> torch.Tensor:
    """The right-singular vectors of ``a`` (r×k), by decreasing singular value, as columns (k×r).

    This is U_A of LoRA §7.2 ("the right-singular unitary matrix" of A): the directions of the input
    space ℝᵏ that the adapter reads from, the most used first.

    Raises:
        ValueError: ``a`` has more rows than columns (then it has no r orthonormal directions in ℝᵏ).
    """
    if a.dim() != 2 or a.shape[0] > a.shape[1]:
        raise ValueError(f"expected an r×k matrix with r ≤ k, got shape {tuple(a.shape)}")
    _, _, vh = torch.linalg.svd(a.detach().to(torch.float64), full_matrices=False)
    return vh.T


def similarity_grid(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Normalised subspace similarity φ(i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖_F² / min(i, j) for every
    i ≤ r₁, j ≤ r₂ (LoRA §7.2, eq. 4; the heatmaps of Figures 3–4).

    Args:
        u1, u2: orthonormal bases n×r₁ and n×r₂ (``right_singular_basis``), columns ordered by importance.

    Returns:
        φ as an r₁×r₂ float64 tensor, entry [i−1, j−1] for the top-i and top-j directions; each value in
        [0, 1]: 1 when one subspace contains the other, 0 when they are orthogonal.

    Raises:
        ValueError: the bases live in spaces of different dimension.
    """
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"bases of ℝ^{u1.shape[0]} and ℝ^{u2.shape[0]} cannot be compared")
    squared = (u1.T.to(torch.float64) @ u2.to(torch.float64)) ** 2
    overlap = squared.cumsum(0).cumsum(1)  # [i-1, j-1] = ‖U₁[:, :i]ᵀ U₂[:, :j]‖_F²
    i = torch.arange(1, u1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, u2.shape[1] + 1, dtype=torch.float64)[None, :]
    return overlap / torch.minimum(i, j)


def random_similarity(i: int, j: int, n: int) -> float:
    """E[φ(i, j)] = max(i, j)/n for uniformly random subspaces of dimensions i and j of ℝⁿ: each of
    the i unit vectors keeps a fraction j/n of its squared length in the j-dimensional subspace, so
    E‖U_iᵀU_j‖_F² = i·j/n."""
    return max(i, j) / n


@lru_cache(maxsize=None)
def shared_threshold(j: int, n: int, alpha: float = 0.05, tests: int = 1) -> float:
    """The squared cosine a unit vector must have with a j-dimensional subspace of ℝⁿ to count as
    shared: the 1 − alpha/tests quantile of that squared cosine for a uniformly random direction.

    For a random unit vector, its squared length in a fixed j-dimensional subspace follows
    Beta(j/2, (n − j)/2) (mean j/n, the random baseline φ(1, j)); ``tests`` applies Bonferroni's
    correction when that many directions are tested at once.
    """
    return float(stats.beta.ppf(1 - alpha / tests, j / 2, (n - j) / 2))


def direction_overlaps(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """φ(u, U₂) = ‖U₂ᵀu‖² for each column u of ``u1`` (n×r₁) with the whole subspace of ``u2``
    (n×r₂): shape (r₁,), values in [0, 1], random baseline r₂/n. It is column j = r₂ of
    ``similarity_grid`` taken one direction at a time."""
    return ((u2.T.to(torch.float64) @ u1.to(torch.float64)) ** 2).sum(0)


def shared_directions(u1: torch.Tensor, u2: torch.Tensor, alpha: float = 0.05) -> int:
    """How many of the r₁ directions of ``u1`` lie in the subspace of ``u2`` (n×r₂) more than random
    directions do: those whose ``direction_overlaps`` exceed ``shared_threshold(r₂, n, alpha, r₁)``
    (each direction tested at level alpha/r₁, so a pair of unrelated subspaces scores 0 with
    probability ≥ 1 − alpha). Across two seeds this is the number of directions the adapters agree
    on: the effective rank of LoRA §7.2's Figure 4 argument.
    """
    n, r1, r2 = u1.shape[0], u1.shape[1], u2.shape[1]
    return int((direction_overlaps(u1, u2) > shared_threshold(r2, n, alpha, r1)).sum())


def low_rank_svd(b: torch.Tensor, a: torch.Tensor):
    """The thin SVD of the rank-r product B·A (B d×r, A r×k) without forming it: QR of B and of Aᵀ,
    then the SVD of the r×r core, O((d + k)·r²) operations instead of O(d·k·min(d, k)).

    Returns:
        (U d×r, S (r,) decreasing, V k×r) in float64 with B·A = U·diag(S)·Vᵀ.
    """
    q_b, r_b = torch.linalg.qr(b.detach().to(torch.float64))
    q_a, r_a = torch.linalg.qr(a.detach().to(torch.float64).T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    return q_b @ u, s, q_a @ vh.T


def amplification(a: torch.Tensor, b: torch.Tensor, scaling: float, w: torch.Tensor) -> dict:
    """How much ΔW = scaling·B·A amplifies the directions of the frozen W it touches (LoRA §7.3, Table 7).

    With U (d×r) and V (k×r) the top-r left and right singular vectors of ΔW (A r×k, B d×r, W d×k):
    ``amplification`` = ‖ΔW‖_F / ‖UᵀWV‖_F. Large values mean ΔW boosts directions that W barely uses;
    values near or below 1 mean it points along directions W already emphasises.

    Returns:
        ``delta_norm`` ‖ΔW‖_F; ``projection`` ‖UᵀWV‖_F; ``amplification``; ``w_norm`` ‖W‖_F; ``random``
        (E‖UᵀWV‖_F²)^½ = ‖W‖_F·r/√(d·k) for random orthonormal U, V (the paper's "Random" row). All
        float, in the units of the weights.

    Raises:
        ValueError: the shapes of A, B and W do not chain (B·A must be d×k like W).
    """
    if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(w.shape):
        raise ValueError(f"B {tuple(b.shape)} · A {tuple(a.shape)} does not match W {tuple(w.shape)}")
    u, s, v = low_rank_svd(b, a)
    w = w.detach().to(torch.float64)
    d, k = w.shape
    r = a.shape[0]
    delta_norm = abs(scaling) * float(s.square().sum().sqrt())
    projection = float(torch.linalg.matrix_norm(u.T @ w @ v))
    w_norm = float(torch.linalg.matrix_norm(w))
    return {
        "delta_norm": delta_norm,
        "projection": projection,
        "amplification": delta_norm / projection,
        "w_norm": w_norm,
        "random": w_norm * r / (d * k) ** 0.5,
    }
