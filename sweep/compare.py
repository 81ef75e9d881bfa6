"""``make compare TASK=mrpc``: where the chosen rank stands. Every method of ``compare.methods`` (full
fine-tuning, head only, BitFit, LoRA and the other peft methods: ``conf/method/``) × every seed of
``compare.seeds``, each at its own learning rate times each factor of ``compare.lr_scale``, trained like a
sweep's trials into ``results/<task>/compare/<compare.name>/trials/``, then tabulated
(``analysis/methods.py``: methods.csv, the report laid out like LoRA's Table 2, the plots).

    python -m sweep.compare task=mrpc                                   # 9 methods × 3 seeds, MRPC, MiniLM
    python -m sweep.compare task=mrpc 'compare.methods=[head,full]' 'compare.lr_scale=[0.3,1,3]' 'compare.seeds=[0,1]'
    python -m sweep.compare debug=tiny 'compare.methods=[head,lora]'   # seconds, on the CPU

Re-running the same command reuses every finished trial (its folder holds ``metrics.json`` of the same trial:
its settings but ``compare.*``, on the same data) and resumes an interrupted one from its last epoch, as a sweep
does; so a comparison widened by a method, a seed or a rate factor trains only what is new.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from sweep.cli import compose, run_cli
from sweep.config import Config
from sweep.errors import UserError
from sweep.paths import results_root
from sweep.record import TrialResult, read_result

#: keys a comparison sets for each of its trials: on its command line they would be silently overridden
OWN_KEYS = {
    "method": "compare.methods=[…]",
    "train.seed": "compare.seeds=[…]",
    "train.lr": "compare.lr_scale=[…] (a factor of each method's own rate, conf/method/)",
}


def compare_dir(cfg: Config) -> Path:
    """``results/<task>/compare/<compare.name>/`` (absolute): a comparison's trials and tables."""
    return results_root(cfg) / cfg.task.name / "compare" / cfg.compare.name


@dataclass
class PlannedTrial:
    """One trial of a comparison: its config (composed with ``method=…``, ``train.seed=…`` and the scaled
    ``train.lr``), the resolved config saved with it, its folder and the factor of its method's rate."""

    cfg: Config
    resolved: object
    run_dir: Path
    lr_scale: float


def _rate_text(lr: float) -> str:
    return f"{lr:g}"


def check_overrides(overrides: Sequence[str]) -> None:
    """Raise ``UserError`` (one line) when ``overrides`` set a key the comparison sets per trial (``OWN_KEYS``)."""
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if key in OWN_KEYS:
            raise UserError(f"{text} is set by make compare for each trial: give {OWN_KEYS[key]} instead")


def uses_key(method: str, key: str) -> bool:
    """Whether a trial of ``method`` reads the setting ``key`` (a dotted key given on the command line): the
    ``lora.*`` keys are the ranked methods' (``lora.init`` LoRA's and DoRA's), VeRA and FourierFT read
    ``lora.targets`` (VeRA ``lora.dropout`` too), a ``method.*`` setting is its own method's
    (``sweep.config.METHOD_KEYS``); every other key is every method's."""
    from sweep.config import METHOD_KEYS, RANKED_METHODS

    group, _, name = key.partition(".")
    if group == "method":
        return name in METHOD_KEYS.get(method, ())
    if group != "lora":
        return True
    if name == "init":
        return method in ("lora", "dora")
    if method in RANKED_METHODS:
        return True
    return (method in ("vera", "fourierft") and name == "targets") or (method == "vera" and name == "dropout")


def method_overrides(overrides: Sequence[str], method: str) -> List[str]:
    """``overrides`` as a trial of ``method`` takes them: the settings it does not read left out (``uses_key``),
    so that ``lora.r=4`` sets the rank of the ranked methods and leaves head only's trial (and its identity) as
    it is; then ``method=<method>``."""
    kept = [o for o in overrides if uses_key(method, o.partition("=")[0].lstrip("+~"))]
    return [*kept, f"method={method}"]


def left_out_lines(cfg: Config, overrides: Sequence[str]) -> List[str]:
    """One line per given setting that some compared methods do not read, naming them (nothing is ignored
    silently)."""
    lines = []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        unused = [m for m in cfg.compare.methods if not uses_key(m, key)]
        if unused:
            lines.append(
                f"compare: {o} applies to {', '.join(m for m in cfg.compare.methods if m not in unused) or 'no method compared'}; "
                f"{', '.join(unused)} do not read it"
            )
    return lines


def comparison_config(overrides: Sequence[str]) -> Config:
    """The comparison's own config (task, model, ``compare.*``, ``results_dir``): ``overrides`` composed without
    the ``method.*`` settings, which only their own method's trials read (``method_overrides``).

    Raises:
        UserError: as ``sweep.cli.compose``; a key the comparison sets per trial (``OWN_KEYS``).
    """
    check_overrides(overrides)
    return compose([o for o in overrides if o.partition("=")[0].lstrip("+~").partition(".")[0] != "method"])[0]


def own_rate(overrides: Sequence[str], method: str) -> float:
    """``method``'s own learning rate: ``train.lr`` of ``conf/method/<method>.yaml`` (LoRA: config.yaml's),
    composed with ``overrides``; a trial of the comparison trains at it times a factor of ``compare.lr_scale``.

    Raises:
        UserError: as ``sweep.cli.compose``.
    """
    return compose(method_overrides(overrides, method))[0].train.lr


def planned_trials(cfg: Config, overrides: Sequence[str]) -> List[PlannedTrial]:
    """Every trial of the comparison ``cfg.compare``, methods in its order, then rate factors, then seeds.

    Raises:
        UserError: a key the comparison sets per trial (``OWN_KEYS``) among ``overrides``, or a method's bad
            settings (``sweep.cli.compose``: e.g. ``lora.r`` given to a method without a rank).
    """
    from sweep.trial import trial_name

    check_overrides(overrides)
    out = []
    for method in cfg.compare.methods:
        own = own_rate(overrides, method)
        for scale in cfg.compare.lr_scale:
            lr = own * scale
            for seed in cfg.compare.seeds:
                tcfg, resolved = compose(
                    [*method_overrides(overrides, method), f"train.seed={seed}", f"train.lr={lr!r}"]
                )
                name = f"{trial_name(tcfg)}-lr{_rate_text(lr)}"
                out.append(PlannedTrial(tcfg, resolved, compare_dir(cfg) / "trials" / name, scale))
    return out


def finished(trial: PlannedTrial) -> Optional[TrialResult]:
    """The trial's record when its folder holds one of this very trial, else None: the same
    ``sweep.resume.trial_identity`` (the ``compare.*`` keys are not part of it, so a comparison widened by a
    method or a rate factor reuses what it trained) on the same data (``data_digest``; ``sweep.data.task_digest``).

    Raises:
        UserError: the folder holds a finished trial of other settings or data (another comparison of the same
            ``compare.name``), naming the first key that differs: its results must not be mixed with these.
    """
    from sweep.data import task_digest
    from sweep.resume import read_config, trial_identity

    metrics, saved = trial.run_dir / "metrics.json", trial.run_dir / "config.yaml"
    if not metrics.exists():
        return None
    result = read_result(metrics)
    if not saved.exists():
        why = "its config.yaml is missing"
    else:
        there, here = trial_identity(read_config(saved)), trial_identity(trial.resolved)
        keys = sorted(k for k in here if there.get(k) != here[k])
        why = f"{keys[0]}: {there.get(keys[0], 'unset')} there, {here[keys[0]]} here" if keys else None
    if why is None and result.data_digest not in (None, task_digest(trial.cfg)):
        why = f"it read other data: digest {result.data_digest} there, {task_digest(trial.cfg)} here"
    if why is not None:
        raise UserError(
            f"{trial.run_dir} holds a finished trial made with other settings than this comparison's ({why}); re-run "
            "with the settings it was made with, or give compare.name=<new name>"
        )
    return result


def _finished_records(cfg: Config) -> List[TrialResult]:
    """The records (``metrics.json``) under the comparison's ``trials/``."""
    return [read_result(p) for p in sorted((compare_dir(cfg) / "trials").glob("*/metrics.json"))]


def expected_seconds(cfg: Config, todo: Sequence[PlannedTrial]) -> Optional[float]:
    """Seconds the trials ``todo`` are expected to take: per trial, the mean train + evaluation seconds of the
    finished trials of its method under the comparison's ``trials/`` (any rate or seed; else of every method
    there); None before any trial there has finished. On the machine as it was when they ran."""
    seen: dict = {}
    for r in _finished_records(cfg):
        if r.train_seconds:
            seen.setdefault(r.method, []).append(float(r.train_seconds) + float(r.eval_seconds or 0.0))
    every = [x for xs in seen.values() for x in xs]
    if not every:
        return None
    mean = {m: sum(xs) / len(xs) for m, xs in seen.items()}
    overall = sum(every) / len(every)
    return sum(mean.get(str(t.cfg.method.name), overall) for t in todo)


def run_compare(cfg: Config, overrides: Sequence[str], log=print) -> List[TrialResult]:
    """Train every trial of the comparison that has not finished (reusing the others), one after another.

    Returns:
        The records of every trial, in ``planned_trials`` order (a crashed trial: status ``failed``).
    """
    from sweep.decide import Status
    from sweep.trial import run_trial

    plan = planned_trials(cfg, overrides)
    for line in left_out_lines(cfg, overrides):
        log(line)
    done = {id(t): finished(t) for t in plan}
    todo = [t for t in plan if done[id(t)] is None]
    log(
        f"compare '{cfg.compare.name}' for {cfg.task.name} on {cfg.model.name}: {len(cfg.compare.methods)} methods × "
        f"{len(cfg.compare.lr_scale)} rate(s) × {len(cfg.compare.seeds)} seeds = {len(plan)} trials; "
        f"{len(plan) - len(todo)} finished (reused), {len(todo)} to train, into {compare_dir(cfg)}"
    )
    if todo:
        from sweep.driver import duration_text

        seconds = expected_seconds(cfg, todo)
        timed = {r.method for r in _finished_records(cfg)}
        unknown = sorted({str(t.cfg.method.name) for t in todo} - timed)
        guess = f"; {', '.join(unknown)}: no finished trial yet, priced at the others' mean" if unknown else ""
        log(
            f"compare: expected time about {duration_text(seconds)} (each trial as the finished trials of its method "
            f"took here{guess})"
            if seconds is not None
            else "compare: expected time not known until a first trial has finished (full fine-tuning is the "
            "dearest, head only the cheapest)"
        )
    records = []
    for i, t in enumerate(plan, 1):
        m = done[id(t)]
        if m is None:
            try:
                m = run_trial(t.cfg, t.resolved, t.run_dir)
            except UserError:
                raise
            except Exception as e:  # one crashed trial costs its row, not the comparison
                m = TrialResult(method=t.cfg.method.name, seed=t.cfg.train.seed, lr=t.cfg.train.lr)
                m.status, m.reason = Status.FAILED, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            value = f"{m.objective} {m.objective_value:.4f}" if m.objective_value is not None else m.status
            value += " (collapsed: one answer for every example)" if m.collapsed else ""
            log(f"[{i}/{len(plan)}] {t.run_dir.name}: {value} | trainable {m.trainable_params or 0:,}")
        records.append(m)
    return records


def main(args: List[str]) -> int:
    from analysis.methods import write_methods  # the entry point joins the two packages (README: Layout)

    cfg = comparison_config(args)
    records = run_compare(cfg, args)
    out = compare_dir(cfg)
    files = write_methods(cfg, args)
    print(
        f"report: {out / 'report.md'} (with {', '.join(str(f.relative_to(out)) for f in files if f.name != 'report.md')})"
    )
    return 0 if all(m.status == "ok" for m in records) else 1


if __name__ == "__main__":
    run_cli(main)
