"""The decision function on scripted histories: fake metrics, no training.

Expected sequences and thresholds are worked out by hand in the comments: metric values are given in
metric units and compared in points (×100); min_delta = 0.5 points, noise_z = 2.
"""

import math

import pytest

from sweep.config import SweepSettings
from sweep.decide import Outcome, plan, pooled_sd, stats_of

# Σ(d+k) per target set for MiniLM (6 layers, d_model 384, d_ff 1536): q and v are 384×384 → 768 each
COSTS = {"q": 6 * 768, "v": 6 * 768, "q,v": 6 * 2 * 768, "q,k,v,o": 6 * 4 * 768,
         "all-linear": 6 * (4 * 768 + 2 * (384 + 1536))}
HEAD = 148_610  # pooler 384·384+384 and classifier 384·2+2


def settings(**kw) -> SweepSettings:
    base = dict(ranks=[1, 2, 4, 8, 16, 32, 64], start_targets=["q", "v"],
                target_sets=[["q"], ["v"], ["q", "v"], ["q", "k", "v", "o"], "all-linear"],
                seeds=[0, 1], min_delta=0.5, noise_z=2.0, patience=1, escalate_max_r=8, max_trials=None)
    base.update(kw)
    return SweepSettings(**base)


def drive(s: SweepSettings, metric, *, flops=1e12, seconds=60.0):
    """Run the procedure against a scripted metric(r, targets, seed); returns (trials, final plan)."""
    history = []
    for _ in range(200):
        p = plan(s, history, COSTS)
        if p.next is None:
            return [(o.r, o.targets, o.seed) for o in history], p
        n = p.next
        value = metric(n.r, n.targets, n.seed)
        status = "ok" if value is not None else "diverged"
        history.append(Outcome(n.r, n.targets, n.seed, status, value, n.r * COSTS[n.targets] + HEAD, flops, seconds))
    raise AssertionError("the procedure did not stop")


def noise(seed):  # ±0.1 points: sd of a pair = 0.1414 points, 2·SE = 0.283 < min_delta
    return 0.001 if seed == 0 else -0.001


def pairs(cfgs):
    return [(r, t, s) for r, t in cfgs for s in (0, 1)]


def actions(p):
    return [(d.action, d.r, d.targets) for d in p.decisions]


def test_rise_then_plateau_then_widen():
    curve = {1: 0.80, 2: 0.82, 4: 0.84, 8: 0.842}
    wide = {"q,k,v,o": 0.85, "all-linear": 0.852}

    def metric(r, t, seed):
        return (curve[r] if t == "q,v" else wide[t]) + noise(seed)

    trials, p = drive(settings(), metric)
    # r: 80 → 82 (+2 > 0.5) → 84 (+2) → 84.2 (+0.2 ≤ 0.5): plateau at r=4 (patience 1);
    # r=4 ≤ 8: widen, cheapest first: q,k,v,o (85, +1.0 over 84) then all-linear (85.2, +0.2: stop)
    assert trials == pairs([(1, "q,v"), (2, "q,v"), (4, "q,v"), (8, "q,v"), (4, "q,k,v,o"), (4, "all-linear")])
    assert actions(p) == [
        ("start", 1, "q,v"), ("continue", 2, "q,v"), ("continue", 4, "q,v"), ("no-gain", 8, "q,v"),
        ("plateau", 4, "q,v"), ("escalate", 4, "q,v"), ("widen", 4, "q,k,v,o"), ("no-gain", 4, "all-linear"),
        ("plateau", 4, "q,k,v,o"), ("recommend", 4, "q,k,v,o")]
    # best is all-linear at 85.2; q,k,v,o at 85.0 is within 0.5 and has fewer parameters
    assert p.recommendation == (4, "q,k,v,o")
    assert p.stop_reason == "plateau"
    no_gain = p.decisions[3]
    assert no_gain.numbers["gain"] == pytest.approx(0.2)
    assert no_gain.numbers["threshold"] == pytest.approx(0.5)
    assert no_gain.numbers["se"] == pytest.approx(math.sqrt(0.02) * 1.0)  # s_pooled = 0.1414, √(1/2+1/2) = 1


def test_flat_from_the_start_escalates_targets():
    def metric(r, t, seed):
        return 0.80 + noise(seed)

    trials, p = drive(settings(), metric)
    # r=2 gains nothing over r=1 → plateau at r=1 → widen at r=1: q,k,v,o gains nothing → stop
    assert trials == pairs([(1, "q,v"), (2, "q,v"), (1, "q,k,v,o")])
    assert [a for a, _, _ in actions(p)] == ["start", "no-gain", "plateau", "escalate", "no-gain", "plateau", "recommend"]
    assert p.decisions[3].r == 1
    assert p.recommendation == (1, "q,v")  # all equal: the fewest parameters wins


def test_keeps_rising_until_the_trial_budget():
    def metric(r, t, seed):
        return 0.70 + 0.02 * math.log2(r) + noise(seed)

    trials, p = drive(settings(max_trials=7), metric)
    assert trials == pairs([(1, "q,v"), (2, "q,v"), (4, "q,v")]) + [(8, "q,v", 0)]
    assert [a for a, _, _ in actions(p)] == ["start", "continue", "continue", "budget", "recommend"]
    assert "sweep.max_trials=7" in p.decisions[3].reason
    assert p.stop_reason == "budget"
    assert p.recommendation == (4, "q,v")  # r=8 has one seed only and was never evaluated


@pytest.mark.parametrize("cap, expect", [
    (dict(max_train_flops=5e12), "sweep.max_train_flops"),  # 5 trials × 1e12 FLOPs reach it
    (dict(max_hours=5 * 60 / 3600), "sweep.max_hours"),     # 5 trials × 60 s
])
def test_flops_and_time_caps(cap, expect):
    trials, p = drive(settings(**cap), lambda r, t, s: 0.70 + 0.02 * math.log2(r) + noise(s))
    assert len(trials) == 5
    assert p.decisions[-2].action == "budget" and expect in p.decisions[-2].reason


def test_noisy_seeds_gain_below_noise_is_a_plateau():
    values = {(1, 0): 0.80, (1, 1): 0.83, (2, 0): 0.82, (2, 1): 0.84}

    def metric(r, t, seed):
        return values.get((r, seed), 0.81)

    trials, p = drive(settings(escalate_max_r=1), metric)
    # r=1: 81.5 ± 2.121, r=2: 83.0 ± 1.414; pooled sd = √((4.5 + 2) / 2) = 1.8028;
    # SE = 1.8028·√(1/2 + 1/2) = 1.8028; threshold = max(0.5, 2·1.8028) = 3.6056 > gain 1.5
    d = p.decisions[1]
    assert d.action == "no-gain" and d.r == 2
    assert d.numbers["gain"] == pytest.approx(1.5)
    assert d.numbers["threshold"] == pytest.approx(2 * math.sqrt(3.25))
    assert p.decisions[2].action == "plateau" and p.decisions[2].r == 1


def test_single_seed_uses_min_delta_only_and_says_so():
    trials, p = drive(settings(seeds=[0], escalate_max_r=1), lambda r, t, s: {1: 0.80, 2: 0.804}.get(r, 0.80))
    d = p.decisions[1]
    assert d.action == "no-gain" and d.numbers["threshold"] == pytest.approx(0.5) and "se" not in d.numbers
    assert "no seed-noise estimate" in d.reason


def test_diverged_trials_never_count_and_all_diverged_is_no_gain():
    def metric(r, t, seed):
        if r == 2:
            return None  # both seeds of r=2 diverge
        if r == 1 and seed == 1:
            return None  # one seed of r=1 diverges: r=1 has n=1
        return 0.80 + noise(seed)

    trials, p = drive(settings(patience=2, escalate_max_r=1), metric)
    kinds = [(d.action, d.r) for d in p.decisions if d.stage == "rank"]
    assert kinds[:3] == [("start", 1), ("failed", 2), ("no-gain", 4)]
    assert p.recommendation[0] != 2


def test_replaying_a_longer_history_keeps_every_earlier_decision():
    curve = {1: 0.80, 2: 0.82, 4: 0.84, 8: 0.842}

    def metric(r, t, seed):
        return (curve[r] if t == "q,v" else 0.85) + noise(seed)

    trials, final = drive(settings(), metric)
    history = [Outcome(r, t, s, "ok", metric(r, t, s), r * COSTS[t] + HEAD, 1e12, 60.0) for r, t, s in trials]
    for cut in range(len(history)):
        partial = plan(settings(), history[:cut], COSTS)
        assert [d.line() for d in partial.decisions] == [d.line() for d in final.decisions[:len(partial.decisions)]]
        assert (partial.next.r, partial.next.targets, partial.next.seed) == trials[cut]


def test_grid_runs_every_configuration_once_cheapest_targets_first():
    s = settings(mode="grid", ranks=[1, 4], target_sets=[["q", "v"], ["q"]], seeds=[0])
    trials, p = drive(s, lambda r, t, seed: 0.8 + 0.001 * r)
    assert trials == [(1, "q", 0), (4, "q", 0), (1, "q,v", 0), (4, "q,v", 0)]
    assert p.decisions[-1].action == "recommend" and p.stop_reason == "grid complete"


def test_pooled_sd_by_hand():
    a, b = stats_of([0.80, 0.82]), stats_of([0.70, 0.73, 0.76])
    # a: sd √2 = 1.4142 (1 dof); b: sd 3 (2 dof); pooled √((1·2 + 2·9) / 3) = √(20/3)
    assert a.sd == pytest.approx(math.sqrt(2)) and b.sd == pytest.approx(3.0)
    assert pooled_sd([a, b]) == pytest.approx(math.sqrt(20 / 3))
    assert pooled_sd([stats_of([0.5])]) is None


def specs(*rows):
    return [(r, t, s) for r, t, s in rows]


@pytest.mark.parametrize("kw, history, expect", [
    # progressive, nothing yet: both seeds of the first rank on the start targets
    (dict(), [], specs((1, "q,v", 0), (1, "q,v", 1))),
    # one seed finished: only the other one
    (dict(), [Outcome(1, "q,v", 0, "ok", 0.8)], specs((1, "q,v", 1))),
    # grid: every point, target sets by cost (q: 4,608 < q,v: 9,216), then rank, then seed
    (dict(mode="grid", ranks=[1, 2], target_sets=[["q", "v"], ["q"]]), [],
     specs((1, "q", 0), (1, "q", 1), (2, "q", 0), (2, "q", 1), (1, "q,v", 0), (1, "q,v", 1), (2, "q,v", 0), (2, "q,v", 1))),
    # grid under max_trials=3 with one trial done: two more may run
    (dict(mode="grid", ranks=[1, 2], target_sets=[["q"]], max_trials=3), [Outcome(1, "q", 0, "ok", 0.8)],
     specs((1, "q", 1), (2, "q", 0))),
    # over: nothing runnable
    (dict(mode="grid", ranks=[1], target_sets=[["q"]], seeds=[0]), [Outcome(1, "q", 0, "failed")], []),
])
def test_runnable_lists_every_trial_that_may_run_now(kw, history, expect):
    p = plan(settings(**kw), history, COSTS)
    assert [(s.r, s.targets, s.seed) for s in p.runnable] == expect
    assert p.next == (p.runnable[0] if p.runnable else None)


@pytest.mark.parametrize("mode", ["progressive", "grid"])
def test_running_every_runnable_trial_at_once_decides_as_one_at_a_time(mode):
    curve = {1: 0.80, 2: 0.82, 4: 0.84, 8: 0.842, 16: 0.843, 32: 0.84, 64: 0.84}
    wide = {"q": 0.78, "v": 0.79, "q,v": 0.0, "q,k,v,o": 0.85, "all-linear": 0.852}

    def metric(r, t, seed):
        return (curve[r] if t == "q,v" else wide[t]) + noise(seed)

    s = settings(mode=mode, ranks=[1, 2, 4, 8] if mode == "grid" else [1, 2, 4, 8, 16, 32, 64])
    one_trials, one = drive(s, metric)
    history = []  # N workers: every runnable trial at once, finishing in reverse order
    while (p := plan(s, history, COSTS)).next is not None:
        for n in reversed(p.runnable):
            history.append(Outcome(n.r, n.targets, n.seed, "ok", metric(n.r, n.targets, n.seed),
                                   n.r * COSTS[n.targets] + HEAD, 1e12, 60.0))
    assert sorted((o.r, o.targets, o.seed) for o in history) == sorted(one_trials)
    assert p.decisions == one.decisions and p.recommendation == one.recommendation
