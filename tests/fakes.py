"""Test support: synthetic sweep studies built with Optuna's API from known numbers (no training), their
trials made from the record type (``sweep.record.TrialResult``) and stored as the store stores them
(``sweep.study.result_attrs``), with the decisions the driver would have stored."""

from dataclasses import asdict, replace

import optuna
from omegaconf import OmegaConf
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from sweep.cli import defaults
from sweep.config import SweepSettings
from sweep.data import task_digest
from sweep.decide import plan
from sweep.record import TrialResult, write_result
from sweep.study import outcomes, result_attrs

NAME = "ranksweep-mrpc-default"
COSTS = {"q,v": 2_000, "q,k,v,o": 4_000}  # LoRA parameters per unit of rank (the study's target_costs)
HEAD, BASE = 10_000, 1_000_000  # head parameters; frozen base model parameters
MAJORITY = 0.684  # majority-class accuracy
#: t quantiles, worked out by hand with scipy.stats.t.ppf
T975 = {1: 12.706204736, 2: 4.302652730}  # t quantile 0.975 by degrees of freedom
T90 = {2: 1.885618083, 3: 1.637744354}  # t quantile 0.9 by degrees of freedom
# LoRA parameters per unit of rank (Σ(d+k) per target set) for MiniLM (6 layers, d_model 384, d_ff 1536):
# q and v are 384×384 → 768 each; up is 384→1536 and down 1536→384 → 1920 each
MINILM_COSTS = {
    "q": 6 * 768,
    "v": 6 * 768,
    "q,v": 6 * 2 * 768,
    "q,k,v,o": 6 * 4 * 768,
    "up,down": 6 * 2 * (384 + 1536),
    "all-linear": 6 * (4 * 768 + 2 * (384 + 1536)),
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def small_settings(**kw) -> SweepSettings:
    """The default sweep settings shrunk to the synthetic studies: ranks 1…8, q,v and q,k,v,o, two seeds."""
    base = dict(
        ranks=[1, 2, 4, 8],
        start_targets=["q", "v"],
        target_sets=[["q", "v"], ["q", "k", "v", "o"]],
        seeds=[0, 1],
        max_seeds=2,
        tolerance=5.0,
        confidence=0.9,
        patience=1,
        escalate_max_r=8,
        max_trials=None,
        max_hours=None,
    )
    return replace(defaults().sweep, **{**base, **kw})


def trial(
    r, targets, seed, outcome, stage, flops=1e11, seconds=10.0, costs=COSTS, n_eval=None, collapsed=None, digest=None
):
    """A frozen trial in the store's layout (``sweep/study.py``). ``outcome``: the accuracy of an ok trial,
    ``diverged``, ``failed``, ``running``, ``orphan`` (FAIL with no configuration stored) or
    ``abandoned`` (FAIL with a configuration and no status: its worker died); ``costs``: LoRA parameters
    per unit of rank of each target set; ``n_eval``: validation examples evaluated (None: not recorded);
    ``collapsed``: the record's flag (an ok trial that predicted one class: ``sweep.collapse``); ``digest``: the
    record's ``data_digest`` (None: not recorded)."""
    dists = {"r": IntDistribution(r, r, log=True), "seed": IntDistribution(seed, seed)}
    params = {"r": r, "seed": seed}
    if outcome == "orphan":
        return create_trial(params=params, distributions=dists, state=TrialState.FAIL)
    attrs = {"targets": targets.split(","), "targets_key": targets, "stage": stage, "run_dir": f"/runs/{r}-{seed}"}
    if outcome in ("running", "abandoned"):
        state = TrialState.RUNNING if outcome == "running" else TrialState.FAIL
        return create_trial(params=params, distributions=dists, user_attrs=attrs, state=state)
    ok = isinstance(outcome, float)
    lora = r * costs[targets]
    result = TrialResult(
        r=r,
        targets=targets.split(","),
        seed=seed,
        status="ok" if ok else outcome,
        reason=None
        if ok
        else {
            "diverged": "training loss became nan in epoch 2 by step 40",
            "failed": "RuntimeError: CUDA error: out of memory",
        }[outcome],
        objective="accuracy",
        objective_value=outcome if ok else None,
        best={"accuracy": outcome if ok else None, "f1": outcome + 0.05 if ok else None},
        lora_alpha=16.0,
        scaling="standard",
        lora_params=lora,
        head_params=HEAD,
        trainable_params=HEAD + lora,
        total_params=BASE + lora,
        trainable_pct=100.0 * (HEAD + lora) / (BASE + lora),
        train_flops=flops,
        eval_flops=flops / 10,
        train_seconds=seconds,
        eval_seconds=1.0,
        peak_mem_mb=900.0,
        majority_baseline={"accuracy": MAJORITY, "f1": 0.812},
        n_eval=n_eval,
        collapsed=collapsed,
        data_digest=digest,
    )
    attrs.update(result_attrs(result))
    if ok:
        return create_trial(params=params, distributions=dists, value=outcome, user_attrs=attrs)
    return create_trial(params=params, distributions=dists, user_attrs=attrs, state=TrialState.FAIL)


def make_study(tmp_path, s: SweepSettings, trials, *, costs=COSTS, sweep_ended=True) -> str:
    """A study at tmp_path/mrpc/default/study.db holding ``trials``, with the decisions the driver
    would have stored; ``sweep_ended=False`` leaves out what it writes at the end (an interruption)."""
    folder = tmp_path / "mrpc" / "default"
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(storage=url, study_name=NAME, direction="maximize")
    for key, value in (
        ("settings", asdict(s)),
        ("task", "mrpc"),
        ("model", "minilm"),
        ("objective", "accuracy"),
        ("metrics", ["accuracy", "f1"]),
        ("target_costs", costs),
    ):
        study.set_user_attr(key, value)
    for t in trials:
        study.add_trial(t)
    p = plan(s, outcomes(study), costs)
    study.set_user_attr("decisions", [d.to_dict() for d in p.decisions])
    if sweep_ended:
        assert p.next is None, "the scripted sweep should be over"
        study.set_user_attr("recommendation", list(p.recommendation) if p.recommendation else None)
        study.set_user_attr("stop_reason", p.stop_reason)
    return url


# A finished progressive sweep. In points: r=1 81.0, r=2 85.0 (+4.0), r=4 86.0 (+1.0), each ±1.414 (sd
# of a pair 2 apart). Pooled sd over r=1,2 is 1.414 (2 d.f.), SE = 1.414·sqrt(1/2+1/2) = 1.414, bounds
# 4 ∓ 1.886·1.414 = [1.33, 6.67]: r=2 continues; r=4: 1 ∓ 1.638·1.414 = [−1.32, 3.32], upper < 5: no
# gain, one doubling past r=2: plateau (patience 1). r=2 ≤ 8, so q,k,v,o is tried at r=2: 86.5 on one
# seed (the other diverged); vs 85.0, SE = 1.414·sqrt(1/2+1/1) = 1.732, bounds 1.5 ∓ 2.84 = [−1.34,
# 4.34]: no gain, plateau. Recommendation: the best is r=2 q,k,v,o (86.5); by trainable parameters r=1
# (12,000) trails by 5.5, upper bound 8.34 ≥ 5; r=2 q,v (14,000) trails by 1.5, upper bound 4.34 < 5: picked.
FINISHED = [
    (1, "q,v", 0, 0.80, "rank", 1.01e11, 10.0),
    (1, "q,v", 1, 0.82, "rank", 1.03e11, 12.0),
    (2, "q,v", 0, 0.84, "rank", 1.02e11, 11.0),
    (2, "q,v", 1, 0.86, "rank", 1.04e11, 13.0),
    (4, "q,v", 0, 0.85, "rank", 1.04e11, 12.0),
    (4, "q,v", 1, 0.87, "rank", 1.06e11, 14.0),
    (2, "q,k,v,o", 0, 0.865, "targets", 1.06e11, 15.0),
    (2, "q,k,v,o", 1, "diverged", "targets", 0.5e11, 7.0),
]


def fake_trial(crash_on_call: int, collapsed: bool = False):
    """A stand-in for ``sweep.trial.run_trial``: raises OSError on call ``crash_on_call`` (1-based), else
    writes and returns the record of an ok trial whose accuracy is 0.8 at r=1 and 0.9 at r=2, on the data
    its config reads (its digest); ``collapsed``: every trial collapsed to the majority class instead
    (accuracy ``MAJORITY``, which its record gives as the constant baseline). Returns
    (the stand-in, the list of the ranks it was called with)."""
    calls = []

    def run_trial(cfg, resolved, run_dir, progress=True, on_epoch=None):
        calls.append(cfg.lora.r)
        if len(calls) == crash_on_call:
            raise OSError(27, "File too large")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))  # as run_trial saves it
        acc = MAJORITY if collapsed else {1: 0.8, 2: 0.9}[cfg.lora.r]
        m = TrialResult(
            r=cfg.lora.r,
            targets=list(cfg.lora.targets),
            seed=cfg.train.seed,
            data_digest=task_digest(cfg),
            objective="accuracy",
            objective_value=acc,
            best={"accuracy": acc, "f1": acc},
            best_epoch=1,
            lora_params=768 * cfg.lora.r,
            head_params=100,
            trainable_params=768 * cfg.lora.r + 100,
            train_flops=1e12,
            train_seconds=1.0,
            eval_seconds=0.1,
            majority_baseline={"accuracy": MAJORITY},
            collapsed=collapsed,
        )
        write_result(run_dir / "metrics.json", m)
        return m

    return run_trial, calls
