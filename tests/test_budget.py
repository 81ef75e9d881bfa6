"""The rank each target set gets for a budget of LoRA parameters (sweep/budget.py), worked out by hand from
MiniLM's shapes: 6 layers; q, k, v, o are 384×384 (768 a rank each), up is 384→1536 and down 1536→384 (1920
a rank each). Per layer and unit of rank: q,v 1,536; q,k,v,o 3,072; up,down 3,840; all-linear 6,912."""

from dataclasses import replace

import pytest
from fakes import MINILM_COSTS

from sweep.budget import budget_ranks, rank_for
from sweep.cli import compose, defaults
from sweep.driver import params_per_rank

SETS = [["q", "k", "v", "o"], ["up", "down"], "all-linear"]


def settings(budgets, start=("q", "v"), sets=SETS):
    return replace(defaults().sweep, mode="budget", start_targets=list(start), target_sets=list(sets), budgets=budgets)


# (budgets, {targets key: rank}), by hand: the budget of r=8 on q,v is 8·1,536·6 = 73,728 LoRA parameters
# per the whole model, 12,288 per layer: q,k,v,o 12,288/3,072 = 4; up,down 12,288/3,840 = 3.2 → 3;
# all-linear 12,288/6,912 = 1.78 → 2. r=64 on q,v: 98,304 per layer: q,k,v,o 32; up,down 25.6 → 26;
# all-linear 14.2 → 14. A count of 13,824 LoRA parameters is 1.5 ranks of q,v: an exact half rounds down.
RANKS = [
    ([{"r": 8, "targets": ["q", "v"]}], {"q,v": 8, "q,k,v,o": 4, "up,down": 3, "all-linear": 2}),
    ([{"r": 64, "targets": ["q", "v"]}], {"q,v": 64, "q,k,v,o": 32, "up,down": 26, "all-linear": 14}),
    ([73_728], {"q,v": 8, "q,k,v,o": 4, "up,down": 3, "all-linear": 2}),
    ([{"r": 16, "targets": ["q"]}], {"q,v": 8, "q,k,v,o": 4, "up,down": 3, "all-linear": 2}),  # 16·768·6
    # r=1 on all-linear, 41,472: q,v 4.5 → 4 (an exact half rounds down), q,k,v,o 2.25 → 2, up,down 1.8 → 2
    ([{"r": 1, "targets": ["all-linear"]}], {"q,v": 4, "q,k,v,o": 2, "up,down": 2, "all-linear": 1}),
]


@pytest.mark.parametrize("budgets, ranks", RANKS, ids=[str(b[0]) for b, _ in RANKS])
def test_the_rank_each_set_gets(budgets, ranks):
    (b,) = budget_ranks(settings(budgets), MINILM_COSTS)
    assert b.ranks == ranks and list(b.ranks)[0] == "q,v"  # the start targets first, then cheapest per rank first
    assert b.lora_params == {t: r * MINILM_COSTS[t] for t, r in ranks.items()}


def test_rounding_is_to_the_nearest_rank_and_a_half_rounds_down():
    # q,v costs 9,216 a rank: 1.5 ranks is 13,824
    assert [rank_for(n, 9_216) for n in (4_608, 4_609, 13_823, 13_824, 13_825, 18_432)] == [0, 1, 1, 1, 2, 2]


def test_the_driver_counts_minilms_shapes_as_by_hand():
    """The sweep's own parameter counts (the real model's module shapes) give the ranks of the table above."""
    cfg, _ = compose(["sweep=budget"])
    per_rank = params_per_rank(cfg)
    assert per_rank == {t: MINILM_COSTS[t] for t in ("q,v", "q,k,v,o", "up,down", "all-linear")}
    assert [b.ranks for b in budget_ranks(cfg.sweep, per_rank)] == [RANKS[0][1], RANKS[1][1]]
