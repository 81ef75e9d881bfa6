"""Hand off a finished sweep's choice as files: ``results/<task>/<sweep.name>/export/``.

    python -m analysis.export task=mrpc                      # make export TASK=mrpc
    python -m analysis.export task=mrpc export.seed=1        # seed 1 of the recommended configuration
    python -m analysis.export task=mrpc export.merge=true    # also the merged model, checked on validation
    python -m analysis.export debug=tiny sweep=grid          # the sweep made with these overrides

Takes the overrides of the sweep (``task``, ``sweep``, ``sweep.name``, ``results_dir``, ``sweep.storage``)
and writes, for the trial of the recommended configuration (its best seed by the objective, or
``export.seed``):

- ``adapter/``: the trial's peft adapter with its trained head and the base model's tokenizer; its
  ``adapter_config.json`` names the local folder of the base weights (the embedded MiniLM's folder
  inside the installed package), so ``AutoPeftModelForSequenceClassification.from_pretrained`` (a causal-LM
  task: ``AutoPeftModelForCausalLM``) reloads it offline; ``recommendation.json`` keeps the hub id for other machines.
- ``recommendation.json``: the configuration (``method``, r, target modules, lora_alpha, scaling, ``lora.init``, learning
  rate, epochs), the objective over seeds (mean, s.d., 95% interval), σ and the sweep's reliability, and
  which study and trial it comes from.
- ``lora_config.py``: the ``LoraConfig(...)`` that trains this configuration again, to paste.
- ``merged/`` (``export.merge=true``): the base model with the update folded in, a plain transformers
  model; written only when its validation predictions equal the trial's ``val_predictions.npy``.

An earlier export of the sweep is replaced whole (written beside it, then swapped in).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from analysis.adapters import trial_config
from analysis.report import SweepReport, load_report
from analysis.summary import results
from sweep.cli import compose, make_command, run_cli
from sweep.config import Config
from sweep.data import class_names
from sweep.decide import ConfigResults, noise_floor
from sweep.decision import Action, ConfigKey, Stage, TrialSpec
from sweep.errors import UserError
from sweep.metrics import metric_of
from sweep.modeling import gguf_file, resolve_model_path
from sweep.paths import sweep_dir

#: the files of an export, in ``export/``
ADAPTER, RECOMMENDATION, LORA_CONFIG, MERGED = "adapter", "recommendation.json", "lora_config.py", "merged"


@dataclass(frozen=True)
class Chosen:
    """The trial an export hands off.

    Attributes:
        config: the recommended (r, targets). seed: its seed; number: its Optuna trial number.
        folder: the trial's folder (``trials/r8-q-v-seed0``). how: why this seed, in words.
        values: the objective of every counted seed of the configuration, by seed (metric units).
    """

    config: ConfigKey
    seed: int
    number: int
    folder: Path
    how: str
    values: Dict[int, float]


def choose_seed(res: ConfigResults, objective: str, seed: Optional[int]) -> tuple:
    """(seed, how) of the recommended configuration's results ``res``: ``seed`` when its statistics count
    it, else (None) the best counted seed by the objective, the earliest of them in seed order on a tie.

    Raises:
        UserError: ``seed`` is not a counted ok seed of the configuration; names the valid ones.
    """
    if seed is not None:
        if seed not in res.seeds:
            raise UserError(
                f"export.seed={seed} is not a seed of the recommended configuration; valid: "
                f"{', '.join(map(str, res.seeds))} (or export.seed=null for the best)"
            )
        return seed, f"export.seed={seed}"
    values, score = _values(res), metric_of(objective).score  # best in the objective's direction
    best = max(res.seeds, key=lambda s: score(values[s]))  # max keeps the first of equal values
    return best, f"its best seed by {objective} (of {len(res.seeds)})"


def _values(res: ConfigResults) -> Dict[int, float]:
    """The objective (metric units) of each counted seed of ``res``, in the order of its seeds."""
    by_seed = {o.seed: o.value for o in res.measured}
    return {s: by_seed[s] for s in res.seeds}


def chosen_trial(cfg: Config, rep: SweepReport) -> Chosen:
    """The trial of the finished sweep ``rep`` to export (``choose_seed`` with ``cfg.export.seed``) and its
    folder under ``cfg``'s results folder.

    Raises:
        UserError: the sweep has not finished, recommends nothing or head only (r=0: no adapter), or
            ``export.seed`` is not one of the recommended configuration's seeds.
    """
    from sweep.driver import run_dir_of

    info = rep.info
    if not info.finished:
        running = f", {info.running} trial(s) running" if info.running else ""
        raise UserError(
            f"sweep '{info.name}' has not finished{running}, so it has no final recommendation to export; "
            f"finish it with `{make_command('sweep', [f'task={info.task_group}', f'sweep={info.settings.mode}', *_kept(info.overrides)])}` "
            "(re-running resumes), then export"
        )
    if info.recommendation is None:
        raise UserError(
            f"sweep '{info.name}' finished without a recommendation ({info.stop_reason}: no trial succeeded); "
            "nothing to export: see its report.md"
        )
    pick = info.recommendation
    if pick[0] == 0:
        raise UserError(
            f"sweep '{info.name}' recommends head only (r=0): no adapter is needed, so there is none to export; the "
            f"trained head (the whole model) is in its trials/head-seed<N>/model/ (see report.md)"
        )
    res = results(info)[pick]
    seed, how = choose_seed(res, info.objective, cfg.export.seed)
    number = max(
        n
        for n, o in info.history
        if (o.r, o.targets, o.seed) == (*pick, seed)
        and o.status == "ok"
        and not o.nested  # the screen's: no pick
        and (info.lr is None or o.lr == info.lr)  # a bracket of rates: the trial at the sweep's rate
    )
    # the sweep's own rule for a trial's folder, with the settings the study was run with
    study_cfg = dataclasses.replace(cfg, sweep=info.settings)
    try:
        folder = run_dir_of(study_cfg, TrialSpec(pick[0], pick[1], seed, Stage.FINAL, lr=info.lr))
    except KeyError:  # the study's latest run dropped the recommended target set from its settings
        raise UserError(
            f"the recommended targets {pick[1]} are not among the target sets of sweep '{info.name}''s latest run; "
            "re-run the sweep with the settings that recommended them, then export"
        ) from None
    return Chosen(pick, seed, number, folder, how, _values(res))


def _kept(overrides: List[str]) -> List[str]:
    return [o for o in overrides if o.split("=", 1)[0] not in ("task", "sweep")]


def _check_trial_folder(chosen: Chosen, merge: bool) -> None:
    """Raises UserError naming the missing file of the chosen trial's folder, and the other seeds."""
    need = [f"{ADAPTER}/adapter_config.json", f"{ADAPTER}/adapter_model.safetensors", "config.yaml", "metrics.json"]
    need += ["val_predictions.npy"] if merge else []
    missing = [f for f in need if not (chosen.folder / f).is_file()]
    if missing:
        others = [s for s in chosen.values if s != chosen.seed]
        other = f", or export another seed: export.seed={others[0]}" if others else ""
        raise UserError(
            f"trial {chosen.number} (r={chosen.config[0]} {chosen.config[1]} seed {chosen.seed}) has no "
            f"{', '.join(missing)} in {chosen.folder}; give the results_dir that holds the sweep's trials/{other}"
        )


def lora_config_text(tcfg: Config, adapter_config: dict, head: List[str], training: Dict[str, object]) -> str:
    """``lora_config.py``: the ``LoraConfig(...)`` that trains the exported configuration again, as Python to
    paste, with the training settings as comments. The trial's resolved config ``tcfg`` gives what it trained
    (r, lora_alpha, lora_dropout, rsLoRA, DoRA, the init as peft's ``init_lora_weights``); the exported
    ``adapter_config.json`` the resolved modules (``target_modules``, ``fan_in_fan_out``, ``task_type``:
    ``SEQ_CLS`` or ``CAUSAL_LM``); ``head`` becomes ``modules_to_save``. A PiSSA/OLoRA adapter is saved
    converted (rank 2r, lora_alpha doubled), so its ``adapter_config.json`` differs from this config: a comment
    says so."""
    from sweep.inits import CONVERTED_INITS
    from sweep.modeling import INIT_LORA_WEIGHTS

    lora, init = tcfg.lora, tcfg.lora.init
    weights = INIT_LORA_WEIGHTS[init]
    weights_text = json.dumps(weights) if isinstance(weights, str) else repr(weights)  # "pissa", as the file's strings
    modules = "".join(f"        {json.dumps(m)},\n" for m in sorted(adapter_config["target_modules"]))
    trained = "".join(f"#   {k} = {v!r}\n" for k, v in training.items())
    notes = ""
    if init in CONVERTED_INITS:
        notes += (
            f"# adapter/ is saved converted ({init}: the base weights kept W - s·B0·A0 while training): its\n"
            f"# adapter_config.json says r={2 * lora.r}, lora_alpha={2 * lora.alpha:g}, an ordinary LoRA adapter that\n"
            "# PeftModel.from_pretrained reloads onto the original base model; this config trains it again.\n"
        )
    if init == "eva":
        notes += (
            "# EVA: before training, call peft's initialize_lora_eva_weights(model, dataloader) on the training\n"
            "# batches (A from the principal components of each matrix's inputs, the ranks redistributed).\n"
        )
    if tcfg.method.name == "adalora":  # its own config class: the budget schedule is part of what it trained
        schedule = "".join(
            f"    {k}={adapter_config.get(k)!r},\n"
            for k in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step")
        )
        return (
            '"""The AdaLoRA configuration of the exported adapter (ranksweep, make export): paste it, or\n'
            '`from lora_config import config`. The adapter next to this file was trained with it."""\n\n'
            "from peft import AdaLoraConfig, TaskType\n\n"
            f"# trained with:\n{trained}"
            "config = AdaLoraConfig(\n"
            f"    task_type=TaskType.{adapter_config.get('task_type') or 'SEQ_CLS'},\n"
            f"{schedule}"
            f"    lora_alpha={lora.alpha!r},\n"
            f"    lora_dropout={lora.dropout!r},\n"
            f"    target_modules=[\n{modules}    ],\n"
            f"    fan_in_fan_out={bool(adapter_config.get('fan_in_fan_out'))!r},\n"
            f"    modules_to_save={json.dumps(list(head))},\n"
            ")\n"
        )
    return (
        '"""The LoRA configuration of the exported adapter (ranksweep, make export): paste it, or\n'
        '`from lora_config import config`. The adapter next to this file was trained with it."""\n\n'
        f"from peft import {'EvaConfig, ' if init == 'eva' else ''}LoraConfig, TaskType\n\n"
        f"# trained with:\n{trained}{notes}"
        "config = LoraConfig(\n"
        f"    task_type=TaskType.{adapter_config.get('task_type') or 'SEQ_CLS'},\n"
        f"    r={lora.r!r},\n"
        f"    lora_alpha={lora.alpha!r},\n"
        f"    lora_dropout={lora.dropout!r},\n"
        f"    target_modules=[\n{modules}    ],\n"
        f"    use_rslora={lora.scaling == 'rslora'!r},\n"
        f"    use_dora={tcfg.method.name == 'dora'!r},\n"
        f"    init_lora_weights={weights_text},\n"
        + ("    eva_config=EvaConfig(),\n" if init == "eva" else "")
        + f"    fan_in_fan_out={bool(adapter_config.get('fan_in_fan_out'))!r},\n"
        f"    modules_to_save={json.dumps(list(head))},\n"
        ")\n"
    )


def recommendation_record(
    rep: SweepReport, chosen: Chosen, record, tcfg: Config, adapter_config: dict, local_base: str
) -> dict:
    """The content of ``recommendation.json``. Metric values are in metric units (accuracy 0.8235, MSE
    0.512), as in the CSVs; the reliability's numbers are in the objective's unit (points, 100 × metric,
    for the GLUE metrics), as in report.md."""
    info, rel = rep.info, rep.reliability
    m = metric_of(info.objective)

    def spread(x: Optional[float]) -> Optional[float]:  # an s.d. in the objective's unit, in metric units
        return None if x is None else x / m.scale

    stats = results(info)[chosen.config].stats
    ends = stats.interval(0.95, noise_floor([o for _, o in info.history], info.settings))
    low, high = sorted(m.value(e) for e in ends) if ends[0] is not None else ends
    decision = next((d for d in reversed(info.decisions) if d.action == Action.RECOMMEND), None)
    return {
        "task": info.task,
        "model": info.model,
        "base_model": {
            "hub_id": record.base_model_name_or_path,
            "local_path": local_base,
            "name_or_path": tcfg.model.name_or_path,
        },
        "label_names": list(record.label_names) or class_names(tcfg),
        "data": {
            "digest": record.data_digest,
            **{
                k: getattr(tcfg.data, k)
                for k in ("dir", "train_file", "validation_file", "dataset_name")
                if getattr(tcfg.data, k)
            },
        },
        "r": chosen.config[0],
        "targets": list(record.targets),
        "target_modules": sorted(adapter_config["target_modules"]),
        "modules_to_save": list(record.head),
        "lora_alpha": record.lora_alpha,
        "lora_dropout": record.lora_dropout,
        "scaling": record.scaling,
        "scaling_factor": record.scaling_factor,
        "method": str(tcfg.method.name),
        "lora_init": str(tcfg.lora.init),
        "learning_rate": tcfg.train.lr,
        "epochs": tcfg.train.epochs,
        "best_epoch": record.best_epoch,
        "training": _training(tcfg),
        "trainable_params": record.trainable_params,
        "lora_params": record.lora_params,
        "metric": {
            "name": info.objective,
            "direction": m.direction.value,
            "units": "metric units (accuracy and F1 in [0, 1], correlations in [-1, 1], MSE in squared label units, "
            "loss in nats, perplexity as exp(loss))",
            "trial_value": record.objective_value,
            "n_seeds": stats.n,
            "by_seed": {str(s): v for s, v in chosen.values.items()},
            "mean": m.value(stats.mean),
            "sd": spread(stats.sd),
            "ci95": [low, high],
            "baseline": info.baseline,
        },
        "sigma": spread(rel.sigma) if rel else None,
        "sigma_measured": spread(rel.measured) if rel else None,
        "sigma_floor": spread(rel.floor) if rel else None,
        "sigma_dof": rel.dof if rel else None,
        "reliability": None
        if rel is None
        else {
            "text": rel.text(),
            "units": m.unit if m.unit != "points" else "points (100 × metric)",
            "sigma": rel.sigma,
            "detectable_gain": rel.detectable_gain,
            "tolerance": rel.tolerance,
            "p_within_tolerance": rel.p_within_tolerance,
            "seeds": rel.seeds,
            "seeds_key": rel.seeds_key,
            "reps": rel.reps,
        },
        "why": decision.reason if decision is not None else None,
        "study": {
            "name": info.name,
            "mode": info.settings.mode,
            "stop_reason": info.stop_reason,
            "provisional": info.stop_reason == "budget",
        },
        "trial": {"number": chosen.number, "seed": chosen.seed, "chosen": chosen.how, "folder": str(chosen.folder)},
    }


def _training(tcfg: Config) -> Dict[str, object]:
    """The training settings of the trial (``train.*`` and ``data.max_length``)."""
    t = tcfg.train
    return {
        "train.lr": t.lr,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.warmup_ratio": t.warmup_ratio,
        "train.weight_decay": t.weight_decay,
        "train.max_grad_norm": t.max_grad_norm,
        "train.backbone_dropout": t.backbone_dropout,
        "data.max_length": tcfg.data.max_length,
    }


def _offline_adapter(source: Path, dest: Path, tcfg: Config, labels: Optional[List[str]]) -> str:
    """Copy the adapter folder ``source`` to ``dest`` with the base model's tokenizer, its
    ``adapter_config.json`` naming the local folder of the base weights (``local_model_path``: the
    package's folder for embedded weights; a hub id stays as it is, served from the local cache), and
    the model config the head was trained in (``config.json``: ``labels`` as ``id2label``/``label2id``,
    their number, the pad token; a causal LM: the pad token alone), whose values the README's reload passes
    on. Returns that base."""
    from transformers import AutoConfig

    from sweep.modeling import gguf_file, load_tokenizer, local_model_path

    shutil.copytree(source, dest)
    base = local_model_path(tcfg.model.name_or_path)
    config_file = dest / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = load_tokenizer(tcfg.model.name_or_path)
    tokenizer.save_pretrained(str(dest))
    # trials of earlier versions saved no config.json: written here for every export, the same as a trial's
    AutoConfig.from_pretrained(
        base,
        **({"gguf_file": gguf_file(base)} if gguf_file(base) else {}),
        **(
            {}
            if labels is None
            else {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
        ),
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(str(dest))
    return base


def validation_predictions(model, tcfg: Config, precision: str) -> np.ndarray:
    """``model``'s predictions on the validation split of the trial config ``tcfg`` (its first
    ``data.max_eval_samples``), batched as the trial evaluated it (``sweep.trial.evaluate``)."""
    import torch

    from sweep.data import Batches, take, task_data
    from sweep.modeling import load_tokenizer
    from sweep.trial import evaluate

    split = take(task_data(tcfg)["validation"], tcfg.data.max_eval_samples)
    batches = Batches(
        split, tcfg.train.eval_batch_size, load_tokenizer(tcfg.model.name_or_path).pad_token_id or 0, shuffle=False
    )
    return evaluate(model, batches, torch.device("cpu"), precision)


def _same(a: np.ndarray, b: np.ndarray) -> int:
    """How many of two prediction arrays' examples differ: class ids exactly, regression scores and a causal
    LM's per-example NLL sums and token counts (shape (N, 3)) beyond 1e-4."""
    if a.shape != b.shape:
        return max(len(a), len(b))
    if np.issubdtype(b.dtype, np.floating):
        differ = ~np.isclose(a, b, rtol=1e-4, atol=1e-4)
        return int(differ.reshape(len(b), -1).any(axis=1).sum())
    return int((a != b).sum())


def _merge(adapter: Path, dest: Path, tcfg: Config, record, expected: np.ndarray) -> dict:
    """Fold the adapter at ``adapter`` into its base model, check the adapter and the merged model
    (reloaded from ``dest``) against the trial's validation predictions ``expected``, and save the merged
    model with the tokenizer into ``dest``. Evaluated on the CPU at the trial's precision.

    Raises:
        UserError: a prediction differs (the adapter alone is still exported).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from sweep.modeling import load_base_model, load_tokenizer

    precision = record.precision or "fp32"
    model = PeftModel.from_pretrained(load_base_model(tcfg.model, class_names(tcfg)), str(adapter))
    checks = {"adapter": validation_predictions(model, tcfg, precision)}
    merged = model.merge_and_unload()
    merged.save_pretrained(str(dest))
    load_tokenizer(tcfg.model.name_or_path).save_pretrained(str(dest))
    auto = AutoModelForCausalLM if tcfg.task.causal_lm else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(str(dest))
    checks["merged model"] = validation_predictions(reloaded, tcfg, precision)
    for what, preds in checks.items():
        wrong = _same(preds, expected)
        if wrong:
            raise UserError(
                f"the {what} of the export predicts {wrong} of {len(expected)} validation examples unlike the "
                "trial's val_predictions.npy, so no merged model is written; export without export.merge=true "
                "for the adapter alone"
            )
    return {"folder": MERGED, "val_predictions_equal": True, "n_eval": int(len(expected)), "precision": precision}


def export(cfg: Config, *, missing_hint: str = "run `make sweep TASK=<task>` first") -> Path:
    """Write the export of the sweep of ``cfg`` (see the module docstring) into
    ``results/<task>/<sweep.name>/export/``, replacing an earlier one once the new one is complete.

    Returns:
        The export folder.

    Raises:
        UserError: no such sweep, a sweep that has not finished or recommends nothing, an
            ``export.seed`` that is not one of the recommendation's seeds, a trial folder without its
            adapter, or (``export.merge``) a merged model whose predictions differ.
    """
    from sweep.record import read_result
    from sweep.study import storage_url, study_name

    if cfg.export.merge and gguf_file(resolve_model_path(cfg.model.name_or_path)):
        raise UserError(
            f"export.merge=true: model '{cfg.model.name}' is read from a GGUF file, and transformers does not save "
            "a model loaded from GGUF; export the adapter alone (export.merge=false) and merge where you load it"
        )
    rep = load_report(storage_url(cfg), study_name(cfg), missing_hint=missing_hint)
    chosen = chosen_trial(cfg, rep)
    _check_trial_folder(chosen, cfg.export.merge)
    tcfg = trial_config(chosen.folder / "config.yaml")
    # the data of this command (data.dir, $GLUE_DIR, or the user's files moved elsewhere) if it names some,
    # else the trial's: the merged model's check reads its validation split
    moved = {k: getattr(cfg.data, k) or getattr(tcfg.data, k) for k in ("dir", "train_file", "validation_file")}
    tcfg = dataclasses.replace(tcfg, data=dataclasses.replace(tcfg.data, **moved))
    record = read_result(chosen.folder / "metrics.json")
    out = sweep_dir(cfg) / "export"
    work = out.with_name(f".export-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        base = _offline_adapter(chosen.folder / ADAPTER, work / ADAPTER, tcfg, record.label_names or class_names(tcfg))
        adapter_config = json.loads((work / ADAPTER / "adapter_config.json").read_text())
        data = recommendation_record(rep, chosen, record, tcfg, adapter_config, base)
        (work / LORA_CONFIG).write_text(lora_config_text(tcfg, adapter_config, record.head, _training(tcfg)))
        if cfg.export.merge:
            expected = np.load(chosen.folder / "val_predictions.npy")
            data["merged"] = _merge(work / ADAPTER, work / MERGED, tcfg, record, expected)
        (work / RECOMMENDATION).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(args: List[str]) -> int:
    cfg, _ = compose(args)
    sweep_args = [a for a in args if not a.startswith("export.")]  # the sweep's own overrides
    out = export(cfg, missing_hint=f"run `{make_command('sweep', sweep_args)}` first")
    data = json.loads((out / RECOMMENDATION).read_text())
    files = [f.name + ("/" if f.is_dir() else "") for f in sorted(out.iterdir())]
    print(
        f"exported r={data['r']} on {','.join(data['targets'])} seed {data['trial']['seed']} (trial "
        f"{data['trial']['number']}, {data['trial']['chosen']}: {data['metric']['name']} "
        f"{data['metric']['trial_value']:.4f}; mean {data['metric']['mean']:.4f} over {data['metric']['n_seeds']} "
        f"seed(s)) to {out}: {', '.join(files)}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
