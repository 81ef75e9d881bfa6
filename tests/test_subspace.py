"""Subspace maths (analysis/subspace.py) on constructed matrices whose overlaps are known by hand or
by a second method (Monte Carlo over random subspaces)."""

import math

import pytest
import torch

from analysis.subspace import (
    amplification,
    direction_overlaps,
    low_rank_svd,
    random_similarity,
    right_singular_basis,
    shared_directions,
    shared_threshold,
    similarity_grid,
)


def random_basis(n: int, r: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random orthonormal n×r basis (QR of a Gaussian matrix)."""
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    return q


def e(n: int, *columns) -> torch.Tensor:
    """The n×len(columns) basis whose columns are the given combinations of unit vectors: each entry
    is {index: coefficient}."""
    out = torch.zeros(n, len(columns), dtype=torch.float64)
    for c, combo in enumerate(columns):
        for index, coefficient in combo.items():
            out[index, c] = coefficient
    return out


H = 1 / math.sqrt(2)
# (u1, u2, φ by hand: rows i = 1.., columns j = 1..)
CASES = {
    "identical": (e(5, {0: 1}, {1: 1}), e(5, {0: 1}, {1: 1}), [[1, 1], [1, 1]]),
    "orthogonal": (e(5, {0: 1}, {1: 1}), e(5, {2: 1}, {3: 1}, {4: 1}), [[0, 0, 0], [0, 0, 0]]),
    # ‖[e0,e1]ᵀ[e0,(e1+e2)/√2]‖² = 1 + ½ → φ(2,2) = 1.5/2; φ(2,1) = ‖[e0,e1]ᵀe0‖²/1 = 1
    "half-turned second direction": (e(5, {0: 1}, {1: 1}), e(5, {0: 1}, {1: H, 2: H}), [[1, 1], [1, 0.75]]),
    # top direction e1 only meets the other's second direction: φ(1,1) = 0, φ(1,2) = 1, φ(2,2) = 1
    "swapped order": (e(5, {1: 1}, {0: 1}), e(5, {0: 1}, {1: 1}), [[0, 1], [1, 1]]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_similarity_of_constructed_subspaces(case):
    u1, u2, expected = CASES[case]
    assert torch.allclose(similarity_grid(u1, u2), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_identical_random_subspaces_are_fully_similar_and_in_range():
    gen = torch.Generator().manual_seed(1)
    u = random_basis(40, 12, gen)
    assert torch.allclose(similarity_grid(u, u), torch.ones(12, 12, dtype=torch.float64))
    phi = similarity_grid(u, random_basis(40, 7, gen))
    assert phi.shape == (12, 7) and 0 <= phi.min() and phi.max() <= 1


def test_random_pairs_average_to_the_baseline():
    n, r1, r2, draws = 48, 6, 12, 3000
    gen = torch.Generator().manual_seed(0)
    mean = sum(similarity_grid(random_basis(n, r1, gen), random_basis(n, r2, gen)) for _ in range(draws)) / draws
    expected = torch.tensor(
        [[random_similarity(i, j, n) for j in range(1, r2 + 1)] for i in range(1, r1 + 1)], dtype=torch.float64
    )
    assert expected[0, 0] == 1 / n and expected[5, 11] == 12 / n
    # per-draw s.d. of φ is below 0.15 here, so the mean of 3000 draws is within 0.01 of E[φ] (> 3.5 s.e.)
    assert torch.allclose(mean, expected, atol=0.01)


def test_right_singular_basis_recovers_the_rows_by_decreasing_singular_value():
    gen = torch.Generator().manual_seed(2)
    v = random_basis(30, 4, gen)  # k×r orthonormal
    a = torch.diag(torch.tensor([0.5, 3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T  # r×k = S·Vᵀ, unsorted
    basis = right_singular_basis(a.float())
    cosines = (basis.T @ v).abs()  # |⟨basis_i, v_j⟩|
    # the largest singular value 3.0 belongs to v's column 1, then 2.0 → 2, 1.0 → 3, 0.5 → 0
    assert cosines[[0, 1, 2, 3], [1, 2, 3, 0]].tolist() == pytest.approx([1, 1, 1, 1], abs=1e-6)
    with pytest.raises(ValueError, match=r"r ≤ k, got shape \(5, 3\)"):
        right_singular_basis(torch.zeros(5, 3))


def test_threshold_is_the_quantile_of_a_random_direction():
    n, j, draws = 64, 8, 40000
    gen = torch.Generator().manual_seed(3)
    u = random_basis(n, j, gen)
    x = torch.randn(draws, n, generator=gen, dtype=torch.float64)
    cos2 = ((x @ u) ** 2).sum(1) / (x**2).sum(1)  # squared cosine of random directions with span(u)
    assert cos2.mean().item() == pytest.approx(j / n, abs=0.002)
    assert torch.quantile(cos2, 0.95).item() == pytest.approx(shared_threshold(j, n), abs=0.005)
    assert torch.quantile(cos2, 0.99).item() == pytest.approx(shared_threshold(j, n, 0.05, 5), abs=0.007)


def test_shared_directions_counts_the_planted_ones():
    n, r = 384, 16
    gen = torch.Generator().manual_seed(4)
    q = random_basis(n, 3 + 2 * (r - 3), gen)
    shared, rest1, rest2 = q[:, :3], q[:, 3:r], q[:, r:]
    u1 = torch.cat([shared, rest1], 1)
    u2 = torch.cat([rest2[:, :4], shared, rest2[:, 4:]], 1)  # the shared ones anywhere in the order
    assert shared_directions(u1, u2) == 3
    assert shared_directions(u2, u1) == 3
    assert shared_directions(u1, u1) == r
    assert direction_overlaps(u1, u2)[:3].tolist() == pytest.approx([1, 1, 1])
    # unrelated subspaces: with a 5% family-wise level, at most a few of 100 pairs share anything
    false = sum(shared_directions(random_basis(n, r, gen), random_basis(n, r, gen)) > 0 for _ in range(100))
    assert false <= 12


def test_low_rank_svd_matches_the_svd_of_the_product():
    gen = torch.Generator().manual_seed(5)
    b, a = torch.randn(20, 3, generator=gen), torch.randn(3, 30, generator=gen)
    u, s, v = low_rank_svd(b, a)
    product = (b @ a).double()
    assert torch.allclose(u @ torch.diag(s) @ v.T, product, atol=1e-10)
    assert torch.allclose(s, torch.linalg.svdvals(product)[:3], atol=1e-10)
    assert torch.allclose(u.T @ u, torch.eye(3, dtype=torch.float64), atol=1e-12)


def _w() -> torch.Tensor:
    w = torch.zeros(6, 5, dtype=torch.float64)
    w[0, 0], w[1, 1], w[2, 2], w[3, 4] = 10.0, 5.0, 1.0, 0.1
    return w


# (B d×r, A r×k, scaling, ‖UᵀWV‖_F by hand, amplification by hand)
AMPLIFICATION = {
    # ΔW = 2·e0e0ᵀ along W's top direction: UᵀWV = W[0,0] = 10, ‖ΔW‖ = 2 → 0.2
    "aligned with W's top direction": (e(6, {0: 1}), 2 * e(5, {0: 1}).T, 1.0, 10.0, 0.2),
    # the same with scaling alpha/r = 0.5: ‖ΔW‖ = 1 → 0.1
    "aligned, scaled by alpha/r": (e(6, {0: 1}), 2 * e(5, {0: 1}).T, 0.5, 10.0, 0.1),
    # ΔW = 2·e3e4ᵀ, a direction W barely uses: UᵀWV = W[3,4] = 0.1 → 2 / 0.1 = 20
    "orthogonal to W's top directions": (e(6, {3: 1}), 2 * e(5, {4: 1}).T, 1.0, 0.1, 20.0),
    # rank 2, ΔW = 3·e0e0ᵀ + e1e1ᵀ on W's two top directions: UᵀWV = diag(10, 5), ‖ΔW‖ = √10
    "rank 2 aligned": (e(6, {0: 3}, {1: 1}), e(5, {0: 1}, {1: 1}).T, 1.0, math.sqrt(125), math.sqrt(10 / 125)),
}


@pytest.mark.parametrize("case", AMPLIFICATION, ids=list(AMPLIFICATION))
def test_amplification_of_constructed_updates(case):
    b, a, scaling, projection, expected = AMPLIFICATION[case]
    out = amplification(a, b, scaling, _w())
    r = a.shape[0]
    assert out["projection"] == pytest.approx(projection)
    assert out["amplification"] == pytest.approx(expected)
    assert out["w_norm"] == pytest.approx(math.sqrt(100 + 25 + 1 + 0.01))
    assert out["random"] == pytest.approx(out["w_norm"] * r / math.sqrt(30))


def test_amplification_shape_mismatch():
    with pytest.raises(ValueError, match=r"B \(3, 1\) · A \(1, 2\) does not match W \(2, 2\)"):
        amplification(torch.zeros(1, 2), torch.zeros(3, 1), 1.0, torch.zeros(2, 2))
