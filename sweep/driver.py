"""The sweep driver: an ask-and-tell loop over an Optuna study, with the decisions of ``sweep/decide.py``.

    python -m sweep task=mrpc                 # the progressive procedure (make sweep TASK=mrpc)
    python -m sweep task=mrpc sweep=grid      # every rank × target set × seed (make sweep SWEEP=grid)
    python -m sweep debug=tiny                # a tiny sweep in a minute, on the CPU

Re-running the same command resumes: finished trials are read from the study, a trial that was
running when its process died continues from its last completed epoch, and the decisions are
replayed from the history, so the sweep goes on exactly where it stopped. At the end the reports of
``analysis/`` are written and the recommendation is printed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from analysis.reliability import reliability
from analysis.report import write_reports
from sweep.cli import UserError, compose, glue_dir, results_root, run_cli
from sweep.config import Config, targets_key
from sweep.data import tokenized_glue
from sweep.decide import Plan, TrialSpec, plan
from sweep.study import (RESULT_ATTRS, fingerprint, load_study, open_study, outcomes, storage_url, study_name,
                         sweep_dir, sweep_lock)
from sweep.trial import run_trial, trial_name


def target_sets(cfg: Config) -> Dict[str, List[str]]:
    """Every target set the sweep may use, by ``targets_key``."""
    sets = [cfg.sweep.start_targets] + list(cfg.sweep.target_sets)
    return {targets_key(t): list(t) for t in sets}


def target_costs(cfg: Config) -> Dict[str, int]:
    """Σ(d+k) over the matrices of each target set (LoRA parameters per unit of rank), from the base
    model's module shapes. Also checks, before any training, that every target set resolves.

    Raises:
        UserError: a target set matches no module (lists the model's linear modules).
    """
    from sweep.modeling import load_base_model, lora_param_count

    base = load_base_model(cfg.model, cfg.task.label_names)
    return {key: lora_param_count(base, targets, cfg.model, 1) for key, targets in target_sets(cfg).items()}


def trial_config(cfg: Config, spec: TrialSpec, targets: List[str]):
    """The typed and resolved config of one trial of the sweep (``targets``: the list behind ``spec.targets``)."""
    tcfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=spec.r, targets=list(targets)),
                               train=dataclasses.replace(cfg.train, seed=spec.seed))
    return tcfg, OmegaConf.structured(tcfg)


def _run_dir(cfg: Config, tcfg: Config) -> Path:
    """``results/<task>/<sweep.name>/trials/r8-q-v-seed0``: a sweep trial's folder, keyed by its configuration."""
    return sweep_dir(cfg) / "trials" / trial_name(tcfg)


def _identity(resolved) -> Dict[str, str]:
    """What makes two trials the same: every setting that gives a result its meaning (model, task,
    data, training, LoRA; see ``sweep.study.fingerprint``) plus r, target matrices and seed."""
    return {**fingerprint(resolved), "lora.r": repr(resolved.lora.r), "lora.targets": repr(list(resolved.lora.targets)),
            "train.seed": repr(resolved.train.seed)}


def _reuse(cfg: Config, tresolved, run_dir: Path) -> Optional[dict]:
    """Read back a finished trial of another sweep under the same ``results/<task>/`` whose resolved
    configuration is the same as this one's (``_identity``): its folder is copied to ``run_dir`` and
    its ``metrics.json`` gains ``reused_from`` (the source folder). None when there is none."""
    want = _identity(tresolved)
    for source in sorted((results_root(cfg) / cfg.task.name).glob(f"*/trials/{run_dir.name}")):
        if source == run_dir or not (source / "metrics.json").is_file() or not (source / "config.yaml").is_file():
            continue
        if _identity(OmegaConf.load(source / "config.yaml")) != want:
            continue
        m = {**json.loads((source / "metrics.json").read_text()), "reused_from": str(source)}
        shutil.copytree(source, run_dir, dirs_exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(tresolved))
        (run_dir / "metrics.json").write_text(json.dumps(m, indent=2))
        return m
    return None


def _execute(study, trial, spec: TrialSpec, targets: List[str], cfg: Config, progress: bool) -> dict:
    """Run (or resume, or read back) one trial and tell the study its result."""
    from optuna.trial import TrialState

    tcfg, tresolved = trial_config(cfg, spec, targets)
    run_dir = _run_dir(cfg, tcfg)
    metrics_file = run_dir / "metrics.json"
    same_config = (run_dir / "config.yaml").is_file() and \
        (run_dir / "config.yaml").read_text() == OmegaConf.to_yaml(tresolved)
    if metrics_file.is_file() and same_config:
        m = json.loads(metrics_file.read_text())  # finished before the process died, not yet told
    else:
        m = _reuse(cfg, tresolved, run_dir)
    if m is None:
        try:
            m = run_trial(tcfg, tresolved, run_dir, progress=progress)
        except UserError:
            raise
        except Exception as e:  # a crash of one trial is recorded; the sweep goes on
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.log").write_text(traceback.format_exc())
            m = {"status": "failed", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    for key in RESULT_ATTRS:
        if key in m:
            trial.set_user_attr(key, m[key])
    if m["status"] == "ok" and m.get("objective_value") is not None:
        study.tell(trial, m["objective_value"])
    else:
        study.tell(trial, state=TrialState.FAIL)
    return m


def _start(trial, spec: TrialSpec, targets: List[str], cfg: Config) -> None:
    """Store the configuration on a new trial: the ``spec`` attribute first (one write), so a trial
    whose process dies at any point can be completed or adopted on resume, never left ambiguous."""
    tcfg, _ = trial_config(cfg, spec, targets)
    trial.set_user_attr("spec", dataclasses.asdict(spec))
    trial.set_user_attr("targets", list(targets))
    trial.set_user_attr("targets_key", spec.targets)
    trial.set_user_attr("stage", spec.stage)
    trial.set_user_attr("run_dir", str(_run_dir(cfg, tcfg)))
    trial.suggest_int("r", spec.r, spec.r, log=True)
    trial.suggest_int("seed", spec.seed, spec.seed)


def _trial_line(number: int, spec: TrialSpec, m: dict, objective: str) -> str:
    reused = f" (reused from {m['reused_from']})" if m.get("reused_from") else ""
    if m["status"] != "ok":
        return f"trial {number} r={spec.r} {spec.targets} seed={spec.seed}: {m['status']} ({m.get('reason')}){reused}"
    return (f"trial {number} r={spec.r} {spec.targets} seed={spec.seed}: {objective} {m['objective_value']:.4f} | "
            f"trainable {m['trainable_params']:,} | {m['train_flops']:.3e} train FLOPs | "
            f"{m['train_seconds'] + m['eval_seconds']:.0f} s{reused}")


def run_sweep(cfg: Config, resolved, *, overrides: List[str] = (), progress: bool = True, log=print) -> Plan:
    """Run the sweep of ``cfg`` to its end (or its compute cap), resuming whatever is in its study.
    ``overrides`` (the command line) are stored so that the report can show commands that continue it.

    Returns the final ``Plan`` (decisions, recommendation, stop reason).

    Raises:
        UserError: incompatible resume, another driver on the same sweep, a target set that matches
            no module, missing data; all before the study is changed.
    """
    import optuna
    from optuna.trial import TrialState

    sdir = sweep_dir(cfg)
    # everything that can be wrong with the input is checked before the study is touched
    sets = target_sets(cfg)
    costs = target_costs(cfg)
    tokenized_glue(cfg.task.name, glue_dir(cfg), tuple(cfg.task.text_fields), tuple(cfg.task.label_names),
                   cfg.model.name_or_path, cfg.data.max_length)  # also tokenises once for every trial
    with sweep_lock(sdir):
        study = open_study(cfg, resolved)
        study.set_user_attr("command_overrides", list(overrides))
        study.set_user_attr("target_costs", costs)
        (sdir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        log(f"sweep {study_name(cfg)} ({cfg.sweep.mode}) on {cfg.model.name}: study {storage_url(cfg)}")
        # a trial still RUNNING holds no lock any more: its process died. One that knows its
        # configuration is finished first (from its last epoch checkpoint); one that died before
        # storing it is adopted by the next trial the plan asks for, so no empty record is left.
        blank = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.trial.Trial(study, t._trial_id)
            if "spec" not in t.user_attrs:
                blank.append(trial)
                continue
            spec = TrialSpec(**t.user_attrs["spec"])
            _start(trial, spec, t.user_attrs["targets"], cfg)
            log(f"resuming trial {t.number} r={spec.r} {spec.targets} seed={spec.seed} (interrupted)")
            m = _execute(study, trial, spec, t.user_attrs["targets"], cfg, progress)
            log(_trial_line(t.number, spec, m, cfg.task.objective))
        printed = 0
        while True:
            p = plan(cfg.sweep, outcomes(study), costs)
            for d in p.decisions[printed:]:
                log("decision " + d.line())
            printed = len(p.decisions)
            study.set_user_attr("decisions", [d.to_dict() for d in p.decisions])
            if p.next is None:
                break
            trial = blank.pop(0) if blank else study.ask()
            _start(trial, p.next, sets[p.next.targets], cfg)
            m = _execute(study, trial, p.next, sets[p.next.targets], cfg, progress)
            log(_trial_line(trial.number, p.next, m, cfg.task.objective))
        for trial in blank:  # only when the plan ended with blank trials left over
            study.tell(trial, state=TrialState.FAIL)
        study.set_user_attr("recommendation", list(p.recommendation) if p.recommendation else None)
        study.set_user_attr("stop_reason", p.stop_reason)
    return p


def main(args: List[str]) -> int:
    cfg, resolved = compose(args)
    p = run_sweep(cfg, resolved, overrides=args)
    sdir = sweep_dir(cfg)
    try:
        files = write_reports(storage_url(cfg), study_name(cfg), sdir)
        print(f"reports: {', '.join(str(Path(f).relative_to(sdir)) for f in files)} in {sdir}")
    except Exception as e:  # the results are safe in the study; `make report` can retry
        print(f"ranksweep: reports not written ({type(e).__name__}: {e}); the study is intact, "
              f"retry with `make report TASK={cfg.task.name}`")
    study = load_study(storage_url(cfg), study_name(cfg))
    rel = reliability(outcomes(study), cfg.sweep, study.user_attrs.get("target_costs"))
    print(f"reliability: {rel.text()}" if rel else "reliability: no seed-noise estimate (no configuration has two "
          "ok seeds), so no gain could be shown significant")
    if p.recommendation:
        r, t = p.recommendation
        provisional = "; provisional: the compute cap cut the procedure short, see report.md" \
            if p.stop_reason == "budget" else ""
        print(f"recommendation: r={r} on {t} ({p.stop_reason}{provisional}); results in {sdir}")
    else:
        print(f"no recommendation: no trial succeeded ({p.stop_reason}); results in {sdir}")
    return 0


if __name__ == "__main__":
    run_cli(main)
