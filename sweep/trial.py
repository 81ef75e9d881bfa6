"""One LoRA trial: fine-tune the adapter and the head on a GLUE task (or the adapter alone on the user's
instruction data, causal-LM objective), evaluate on the validation split after every epoch, write
``metrics.json``, the peft adapter and the resolved config.

    python -m sweep.trial task=mrpc lora.r=8 'lora.targets=[q,v]'     # full MRPC, embedded MiniLM
    python -m sweep.trial task=cola lora.r=4 lora.targets=all-linear
    python -m sweep.trial debug=tiny                                   # seconds, on the CPU
    python -m sweep.trial task=sft model=smollm2-135m data.train_file=/abs/sft.jsonl   # online: a hub model

Every key of conf/config.yaml can be overridden the same way. The run directory is printed at the end:
``results/<task>/trials/<model>-r<r>-<targets>-seed<seed>-<hash>/``. A trial that is killed resumes
from its last completed epoch when the same command runs again (``sweep/resume.py``).
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from sweep.cli import compose, run_cli
from sweep.collapse import NOTE as COLLAPSED
from sweep.collapse import is_collapsed
from sweep.config import Config, Method
from sweep.data import Batches, class_names, data_source, dropped_line, lm_dropped, take, task_data, task_digest
from sweep.decide import Status
from sweep.errors import UserError
from sweep.faults import atomic_write
from sweep.flops import FlopModel
from sweep.inits import CONVERTED_INITS, INITIAL_ADAPTER, initialize_eva, save_initial
from sweep.methods import after_step, apply_method, describe_method, describe_params, method_targets, save_trained
from sweep.metrics import compute_metrics, metric_of, token_scores
from sweep.modeling import (
    check_limits,
    family_applied,
    load_base_model,
    load_tokenizer,
    local_model_path,
    parameter_counts,
    portable_base_id,
    set_backbone_dropout,
    trainable_state,
)
from sweep.nested import RankTruncation, save_truncated, step_ranks
from sweep.paths import results_root
from sweep.record import TrialResult, write_result
from sweep.redact import config_yaml
from sweep.resume import CHECKPOINT, Progress, load_checkpoint, save_checkpoint
from sweep.runtime import library_versions, peak_memory_mb, reset_peak_memory, resolve_device, resolve_precision

#: steps between two reads of the loss on the host (progress bar and the NaN/inf check)
LOSS_CHECK_EVERY = 20


def targets_slug(targets: List[str]) -> str:
    """Folder-safe text of a target set: ``q-v``, ``all-linear``; regexes become a short hash."""
    text = "-".join(targets)
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", text):
        return text
    return "t" + hashlib.sha1(text.encode()).hexdigest()[:8]


def trial_name(cfg: Config) -> str:
    """``r8-q-v-seed0``: a trial's configuration as a folder name (unique within a sweep); a nested trial
    ``r64-q-v-nested-seed0``; another method than LoRA is named first, with what it adapts: ``dora-r8-q-v-seed0``,
    ``vera-q-v-seed0``, ``ia3-k-v-down-seed0``, ``full-seed0``."""
    nested = "-nested" if cfg.lora.nested else ""
    method = cfg.method.name
    if method == Method.lora:
        return f"r{cfg.lora.r}-{targets_slug(cfg.lora.targets)}{nested}-seed{cfg.train.seed}"
    if cfg.method.ranked:
        what = f"-r{cfg.lora.r}-{targets_slug(cfg.lora.targets)}"
    elif method in (Method.vera, Method.fourierft):
        what = f"-{targets_slug(cfg.lora.targets)}"
    elif method == Method.ia3:
        what = f"-{targets_slug(cfg.method.ia3_targets)}"
    else:
        what = ""
    return f"{method}{what}-seed{cfg.train.seed}"


def evaluate(model, batches: Batches, device: torch.device, precision: str) -> np.ndarray:
    """Predictions for every example of the split, in the split's order (shape (N,)): class ids
    (int64), or for regression (float labels) the predicted scores (float32). A causal-LM split: shape
    (N, 3) float64, each example's summed NLL of its completion tokens (nats), its correctly predicted
    completion tokens and its completion tokens (``sweep.metrics.token_scores``).

    A causal-LM split is evaluated in fp32 whatever ``precision`` says: bf16 moved the embedded SmolLM2's
    validation loss by up to 0.015 nats with the batch's padding (measured), more than the 0.01-nat
    tolerance its decisions are taken at; classification evaluates at ``precision``, as it trained."""
    model.eval()
    n = len(batches.lengths)
    if batches.causal_lm:
        preds = np.empty((n, 3), dtype=np.float64)
        precision = "fp32"
    else:
        preds = np.empty(n, dtype=np.float32 if batches.regression else np.int64)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
        for batch in batches.epoch():
            index = batch.pop("index")
            labels = batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            if batches.causal_lm:
                out = torch.stack(token_scores(logits, labels.to(device)), dim=-1)
            else:
                out = logits.float().squeeze(-1) if batches.regression else logits.argmax(-1)
            preds[index.numpy()] = out.cpu().numpy()
    return preds


def completion_tokens(split) -> np.ndarray:
    """Scored tokens of each example of a tokenised causal-LM split, shape (N,): its labels other than −100
    after the first position (position t predicts label t + 1: the first label is never scored)."""
    return np.asarray([sum(x != -100 for x in labels[1:]) for labels in split["labels"]], dtype=np.float64)


def warmup_steps(cfg: Config, n_train: int) -> tuple:
    """(optimiser steps, warm-up steps) of a trial on ``n_train`` training examples: epochs × ⌈n/batch⌉
    steps, the first ⌈warmup_ratio · steps⌉ of them warming the learning rate up linearly from 0."""
    total = cfg.train.epochs * -(-n_train // cfg.train.batch_size)
    return total, math.ceil(cfg.train.warmup_ratio * total)


def check_training_steps(cfg: Config, n_train: int) -> None:
    """Refuse a trial whose every optimiser step has learning rate 0: with warm-up the first step's
    rate is 0 (linear warm-up from 0), so one step in all trains nothing, and every configuration would
    score as the untrained model with status ok.

    Raises:
        UserError: names the step count and the settings that would give the adapter a step to learn in.
    """
    total, warmup = warmup_steps(cfg, n_train)
    if total - (1 if warmup else 0) < 1:
        raise UserError(
            f"train.epochs={cfg.train.epochs} × ⌈{n_train} training examples / train.batch_size="
            f"{cfg.train.batch_size}⌉ = {total} optimiser step, taken at learning rate 0 by the warm-up "
            f"(train.warmup_ratio={cfg.train.warmup_ratio:g}): the adapter would not train; give at least "
            "two steps (more examples or epochs, a smaller batch) or train.warmup_ratio=0"
        )


@dataclass
class EpochStats:
    """What one pass over the training batches did (``train_one_epoch``)."""

    #: mean training loss over the steps taken (NaN or inf when the epoch diverged)
    mean_loss: float
    #: optimiser steps taken (fewer than the epoch's batches when it diverged)
    steps: int
    #: executed training FLOPs of those steps (``sweep/flops.py``)
    flops: int
    #: non-padding tokens trained on (attention mask sum)
    tokens: int
    #: tokens including padding (batch × padded length)
    padded_tokens: int
    #: wall-clock seconds, device work included
    seconds: float
    #: the mean loss became NaN/inf and the epoch stopped at step ``steps``
    diverged: bool


def train_one_epoch(
    model,
    batches: Batches,
    epoch: int,
    optimizer,
    scheduler,
    flops: FlopModel,
    device: torch.device,
    precision: str,
    max_grad_norm: Optional[float],
    *,
    desc: str = "",
    bar: bool = False,
    on_step: Optional[Callable[[int], None]] = None,
    after_step: Optional[Callable[[int, int], None]] = None,
) -> EpochStats:
    """One pass over ``batches`` in the order of ``epoch`` (0-based: it seeds the shuffle): forward, backward,
    gradient clipping to ``max_grad_norm`` (None or 0: none), an optimiser and a scheduler step per batch.

    The mean loss is read on the host every ``LOSS_CHECK_EVERY`` steps and after the last one; once it is
    NaN/inf the epoch stops there and ``diverged`` is set (no exception). ``bar`` shows a live tqdm bar
    titled ``desc``. ``on_step(i)`` is called before the forward pass of step i (0-based; nested-rank training
    sets the step's rank there). ``after_step(epoch, i)`` is called after step i's optimiser and scheduler steps,
    before the gradients are cleared (AdaLoRA prunes its budget there, ``sweep.methods.after_step``).

    Returns:
        ``EpochStats``: mean loss, steps, FLOPs, tokens, seconds and whether the loss diverged.
    """
    from tqdm.auto import tqdm

    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    loss_sum, steps, n_flops, tokens, padded = torch.zeros((), device=device), 0, 0, 0, 0
    diverged = False
    start = time.perf_counter()
    progress_bar = tqdm(total=len(batches), desc=desc, leave=False, disable=not bar, dynamic_ncols=True)
    for batch in batches.epoch(epoch):
        batch.pop("index")
        if on_step is not None:
            on_step(steps)
        n, width = batch["input_ids"].shape
        n_flops += flops(n, width)
        padded += n * width
        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else n * width
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).loss
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(epoch, steps)
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        steps += 1
        progress_bar.update()
        if steps % LOSS_CHECK_EVERY == 0 or steps == len(batches):
            mean_loss = loss_sum.item() / steps  # one host sync every LOSS_CHECK_EVERY steps
            progress_bar.set_postfix(loss=f"{mean_loss:.4f}")
            if not math.isfinite(mean_loss):
                diverged = True
                break
    progress_bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock stops when the device's work is done, not queued
    return EpochStats(
        mean_loss=loss_sum.item() / steps,
        steps=steps,
        flops=n_flops,
        tokens=tokens,
        padded_tokens=padded,
        seconds=time.perf_counter() - start,
        diverged=diverged,
    )


def adapted_model(base, cfg: Config, model_cfg, total_steps: int):
    """``base`` as a trial trains it: the backbone's dropout set (``train.backbone_dropout``), then adapted
    by ``cfg.method`` (LoRA of ``cfg.lora`` by default; ``sweep.methods.apply_method``; ``base`` is changed in
    place). ``total_steps``: the trial's optimiser steps (AdaLoRA schedules its budget in steps)."""
    if cfg.train.backbone_dropout is not None:
        set_backbone_dropout(base, cfg.train.backbone_dropout, model_cfg.head)
    return apply_method(base, cfg, model_cfg, total_steps)


def trial_batches(cfg: Config, data, pad_id: int) -> tuple:
    """(training split, validation split, their ``Batches``) of a trial: the tokenised ``data`` cut to
    ``data.max_train_samples`` / ``data.max_eval_samples``, training batches shuffled by ``train.seed``."""
    train_split = take(data["train"], cfg.data.max_train_samples)
    val_split = take(data["validation"], cfg.data.max_eval_samples)
    train_batches = Batches(
        train_split,
        cfg.train.batch_size,
        pad_id,
        shuffle=True,
        seed=cfg.train.seed,
        group_by_length=cfg.train.group_by_length,
    )
    return train_split, val_split, train_batches, Batches(val_split, cfg.train.eval_batch_size, pad_id, shuffle=False)


def flop_models(model, train_batches: Batches, device: torch.device) -> tuple:
    """(training, evaluation) ``FlopModel`` of ``model``, probed on the first training batch's inputs."""
    probe = {k: v.to(device) for k, v in next(train_batches.epoch(0)).items()}
    return FlopModel(model, probe, train=True), FlopModel(model, probe, train=False)


def run_trial(
    cfg: Config, resolved, run_dir: Path, *, progress: bool = True, on_epoch: Optional[Callable[[dict], None]] = None
) -> TrialResult:
    """Train and evaluate one LoRA configuration; returns its record, also written as ``metrics.json``.

    Args:
        cfg, resolved: the typed config and its resolved ``DictConfig`` (saved as ``config.yaml``).
        run_dir: the trial's folder; a ``checkpoint.pt`` left there by an interrupted run of the same
            config is resumed from its last completed epoch (removed once the trial ends).
        progress: one line per finished epoch, and a live tqdm bar per epoch when stderr is a terminal
            (in a log file, nohup or a batch job, the bar's updates would be thousands of fragments).
        on_epoch: called with each epoch's record (``epoch``, ``train_loss``, the GLUE metrics) once
            it is evaluated (the sweep reports it to Optuna as an intermediate value).

    Returns:
        The ``sweep.record.TrialResult``: task, model, LoRA settings, parameter counts (``lora_params`` =
        Σ r·(d+k) over adapted matrices), GLUE metrics per epoch and at the best epoch, FLOPs
        (``train_flops``, ``eval_flops``: executed, see ``sweep/flops.py``), seconds, ``peak_mem_mb``,
        library versions and ``status`` (``ok``, or ``diverged`` with a ``reason`` when the training
        loss becomes NaN/inf; the trial then ends without raising).

    Raises:
        UserError: bad data directory, model, targets or ``lora.init`` (before any training).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    config_text = config_yaml(resolved)
    device = resolve_device(cfg)
    precision = resolve_precision(cfg, device)
    reset_peak_memory(device)  # peak_mem_mb is this trial's, not the process's lifetime peak
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)

    # model: the seed fixes the new head and the random A matrices
    torch.manual_seed(cfg.train.seed)
    labels = class_names(cfg)  # the user's data: read from its training labels; None: a causal LM
    base = load_base_model(cfg.model, labels)
    model_cfg = family_applied(base, cfg.model)  # role map and head of the checkpoint's family (a causal LM: none)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    check_limits(
        base,
        tokenizer,
        model_cfg,
        target_sets=[cfg.lora.targets] if cfg.method.ranked else [],  # r ≤ min(d, k): a rank's limit
        r=cfg.lora.r,
        r_key="lora.r",
        max_length=cfg.data.max_length,
        n_texts=len(cfg.task.text_fields or [None]),  # a causal-LM record: one sequence
        init=cfg.lora.init,
    )
    # data: tokenised once per process (cached), then cut to the requested sizes
    data = task_data(cfg)
    train_split, val_split, train_batches, val_batches = trial_batches(cfg, data, tokenizer.pad_token_id or 0)
    total_steps, warmup = warmup_steps(cfg, len(train_split))
    model = adapted_model(base, cfg, model_cfg, total_steps).to(device)
    # nested-rank training (DyLoRA): every rank of the set trained and evaluated by truncation; else one rank
    ranks = cfg.lora.nested_ranks if cfg.lora.nested else [cfg.lora.r]
    truncation = RankTruncation(model, cfg.lora.r, cfg.lora.scaling == "rslora") if cfg.lora.nested else None
    # what the metrics compare predictions with: class ids or scores; a causal LM's completion tokens per example
    val_labels = completion_tokens(val_split) if cfg.task.causal_lm else np.asarray(val_split["label"])
    check_training_steps(cfg, len(train_split))
    if cfg.lora.init == "eva":
        initialize_eva(model, train_batches)  # A from the data, the ranks redistributed: before the optimizer
    counts = parameter_counts(model, model_cfg.head)
    if cfg.task.causal_lm:  # before any step: the model as initialised computes the base model
        baseline = base_model_baseline(cfg, model, val_batches, val_labels, device, precision)
    else:
        baseline = majority_baseline(cfg, np.asarray(data["train"]["label"]), val_labels)
    # only now, with data, model and targets known to be valid, does the trial leave a trace on disk
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(config_text))
    # PiSSA and OLoRA train on W_res: the adapter is saved converted against its initial state, kept until then
    initial = run_dir / INITIAL_ADAPTER if cfg.lora.init in CONVERTED_INITS else None
    if initial is not None:
        save_initial(model, initial)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)

    flops_train, flops_eval = flop_models(model, train_batches, device)
    eval_flops_per_pass = sum(flops_eval(n, width) for n, width in val_batches.shapes())

    score = metric_of(cfg.task.objective).score  # the best epoch is the best in the objective's direction

    def keep(p: Progress, record: dict, preds: np.ndarray) -> None:
        """Add an evaluated epoch to ``p``, and make it ``p``'s best when it beats the best so far."""
        p.history.append(record)
        if p.best is None or score(record[cfg.task.objective]) > score(p.best[cfg.task.objective]):
            p.best, p.best_state, p.best_preds = record, trainable_state(model), preds

    # restored last of the set-up: the RNG must continue exactly where the stopped run left it
    ckpt_path = run_dir / CHECKPOINT
    done = load_checkpoint(ckpt_path, model, optimizer, scheduler, config_text, device) or Progress()
    method_step = after_step(model, cfg, len(train_batches))  # AdaLoRA's budget update; None for the others
    for epoch in range(done.epoch, cfg.train.epochs):
        desc = f"{trial_name(cfg)} epoch {epoch + 1}/{cfg.train.epochs}"
        on_step = None
        if truncation is not None:
            drawn = ranks if cfg.lora.nested_draw == "ranks" else range(1, cfg.lora.r + 1)
            draws = step_ranks(drawn, cfg.train.seed, epoch, len(train_batches))

            def on_step(i: int, draws=draws) -> None:
                truncation.set(int(draws[i]))

        stats = train_one_epoch(
            model,
            train_batches,
            epoch,
            optimizer,
            scheduler,
            flops_train,
            device,
            precision,
            cfg.train.max_grad_norm,
            desc=desc,
            bar=progress and sys.stderr.isatty(),
            on_step=on_step,
            after_step=method_step,
        )
        done.train_flops += stats.flops
        done.train_tokens += stats.tokens
        done.padded_tokens += stats.padded_tokens
        done.train_seconds += stats.seconds
        if stats.diverged:
            done.status = Status.DIVERGED
            done.reason = f"training loss became {stats.mean_loss} in epoch {epoch + 1} by step {stats.steps}"
            break

        for b in ranks:  # the trial's own rank last: its record is the epoch's
            if truncation is not None:
                truncation.set(b)
            start = time.perf_counter()
            preds = evaluate(model, val_batches, device, precision)
            done.eval_seconds += time.perf_counter() - start
            done.eval_flops += eval_flops_per_pass
            record = {
                "epoch": epoch + 1,
                "train_loss": stats.mean_loss,
                **compute_metrics(cfg.task.metrics, preds, val_labels),
            }
            keep(done if b == cfg.lora.r else done.ranks.setdefault(b, Progress()), record, preds)
        if on_epoch is not None:
            on_epoch(record)
        done.epoch = epoch + 1
        if progress:
            scores = ", ".join(f"{k} {record[k]:.4f}" for k in cfg.task.metrics)
            if truncation is not None:
                by_rank = done.ranks | {cfg.lora.r: done}
                scores += "; by rank " + ", ".join(
                    f"r={b} {by_rank[b].history[-1][cfg.task.objective]:.4f}" for b in ranks
                )
            tqdm.write(
                f"{desc}: train loss {record['train_loss']:.4f}, {scores} ({done.train_seconds:.0f} s training so far)"
            )
        if done.epoch < cfg.train.epochs:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, done, config_text, device)

    if truncation is not None:
        truncation.remove()  # the whole rank again, and no hooks: the model is the trial's rank-r adapter
    # one constant answer for every validation example: the trial collapsed (a measurement, not a value)
    collapsed = is_collapsed(done.best_preds, val_labels, cfg.task.problem_type) if done.status == Status.OK else None
    result = _result(
        cfg,
        model_cfg,
        counts,
        _scaling_factor(model) if cfg.method.ranked else None,
        done,
        device,
        precision,
        len(train_split),
        val_split,
        baseline,
        collapsed,
    )
    for b, p in done.ranks.items():
        # each truncated rank at its best epoch, as an ordinary peft LoRA adapter of rank b
        if p.best_state is not None:
            model.load_state_dict(p.best_state, strict=False)
            save_truncated(model, b, run_dir / f"adapter-r{b}")
            base.config.save_pretrained(str(run_dir / f"adapter-r{b}"))
            np.save(run_dir / f"val_predictions-r{b}.npy", p.best_preds)
    if done.best_state is not None:
        # the saved adapter (or model) is the best epoch's, so that reloading it reproduces the reported metrics
        model.load_state_dict(done.best_state, strict=False)
        save_trained(model, base, run_dir, initial)
        np.save(run_dir / "val_predictions.npy", done.best_preds)
    if initial is not None:
        shutil.rmtree(initial)  # the converted adapter holds A₀ and B₀ (sweep/inits.py)
    write_result(run_dir / "metrics.json", result)
    ckpt_path.unlink(missing_ok=True)
    for stale in run_dir.glob(f".{CHECKPOINT}.*.tmp"):  # a write killed mid-way (sweep.faults.atomic_write)
        stale.unlink(missing_ok=True)
    return result


def _scaling_factor(model) -> float:
    """The factor ΔW = B·A is multiplied by, as peft's LoRA layers hold it (``LoraLayer.scaling[adapter]``,
    set by ``update_layer``): alpha/r (LoRA §4.1) or alpha/sqrt(r) (rsLoRA, Kalajdzievski 2023).

    Raises:
        ValueError: ``model`` has no LoRA layer, or its layers are scaled differently (no single factor).
    """
    from peft.tuners.lora import LoraLayer

    factors = {m.scaling[a] for m in model.modules() if isinstance(m, LoraLayer) for a in m.active_adapters}
    if len(factors) != 1:
        raise ValueError(
            f"expected one LoRA scaling factor over the model's active LoRA layers, found {sorted(factors)}"
        )
    return factors.pop()


def majority_baseline(cfg: Config, train_labels: np.ndarray, val_labels: np.ndarray) -> Dict[str, float]:
    """GLUE metrics on ``val_labels`` of always predicting the majority class of ``train_labels`` (the
    task's whole training split, not a ``data.max_train_samples`` subset, whose majority can flip: RTE's
    is 1,249 entailment to 1,241), GLUE's most-frequent-class baseline (Wang et al. 2019, §5; MRPC:
    accuracy 0.684); for regression the training mean score (correlations of a constant are 0).

    Args:
        train_labels: shape (n_train,), class ids (int) or scores (float).
        val_labels: shape (n_val,), the same kind.
    """
    train_labels = np.asarray(train_labels)
    constant = train_labels.mean() if cfg.task.regression else np.bincount(train_labels).argmax()
    return compute_metrics(cfg.task.metrics, np.full(len(val_labels), constant, dtype=val_labels.dtype), val_labels)


def base_model_baseline(cfg: Config, model, val_batches: Batches, val_labels: np.ndarray, device, precision: str):
    """The causal-LM metrics of the base model on the validation batches: the reference a causal-LM adapter must
    beat ("does the adapter beat no adapter?"). ``model`` is the trial's model as initialised, before any step,
    with its peft adapter switched off (``disable_adapter``: prefix tuning and FourierFT do not start at the base
    model); PiSSA's and OLoRA's stays on: their W_res + s·B₀·A₀ is W up to rounding (``sweep/inits.py``), their
    ``disable_adapter`` would compute W_res. A whole-model method (full, BitFit) is the base model until its
    first step. Its pass is not counted in ``eval_flops`` (it measures no configuration)."""
    import contextlib

    switch_off = hasattr(model, "disable_adapter") and cfg.lora.init not in CONVERTED_INITS
    with model.disable_adapter() if switch_off else contextlib.nullcontext():
        preds = evaluate(model, val_batches, device, precision)
    return compute_metrics(cfg.task.metrics, preds, val_labels)


def baseline_kind(cfg: Config) -> str:
    """What ``majority_baseline`` holds for ``cfg``'s task, in words."""
    if cfg.task.causal_lm:
        return "base model without the adapter"
    return "training mean" if cfg.task.regression else "majority class"


def _result(
    cfg: Config,
    model_cfg,
    counts: dict,
    scaling_factor: float,
    done: Progress,
    device,
    precision: str,
    n_train: int,
    val_split,
    baseline: Dict[str, float],
    collapsed: Optional[bool] = None,
) -> TrialResult:
    """The trial's record from its configuration, its parameter counts, the validation split it was
    evaluated on, what it did (``done``) and whether it collapsed (``sweep.collapse.is_collapsed``)."""
    best = done.best or {}
    epochs_run = len(done.history)
    return TrialResult(
        task=cfg.task.name,
        model=cfg.model.name,
        model_name_or_path=cfg.model.name_or_path,
        # the exact weights used here, and the id the adapter names as its base (reloadable elsewhere)
        model_path=local_model_path(cfg.model.name_or_path),
        base_model_name_or_path=portable_base_id(cfg.model),
        family=model_cfg.family,
        roles=dict(model_cfg.roles),
        head=list(model_cfg.head),
        pad_token_id=load_tokenizer(cfg.model.name_or_path).pad_token_id,
        label_names=class_names(cfg) or [],
        method=cfg.method.name,
        r=cfg.lora.r if cfg.method.ranked else None,
        nested=True if cfg.lora.nested else None,
        rank_curve=_rank_curve(cfg, done) if cfg.lora.nested else None,
        lora_alpha=cfg.lora.alpha if cfg.method.ranked else None,
        lora_dropout=cfg.lora.dropout if cfg.method.ranked else None,
        scaling=cfg.lora.scaling if cfg.method.ranked else None,
        lora_init=cfg.lora.init if cfg.method.ranked else None,
        lr=cfg.train.lr,
        scaling_factor=scaling_factor,
        targets=list(method_targets(cfg)),
        seed=cfg.train.seed,
        data_digest=task_digest(cfg),
        validation_rows=list(map(int, val_split["idx"])) if data_source(cfg).carved else None,
        **counts,
        trainable_pct=100.0 * counts["trainable_params"] / counts["total_params"],
        train_flops=done.train_flops,
        eval_flops=done.eval_flops,
        train_seconds=done.train_seconds,
        eval_seconds=done.eval_seconds,
        peak_mem_mb=peak_memory_mb(device),
        best_epoch=best.get("epoch"),
        objective=cfg.task.objective,
        objective_value=best.get(cfg.task.objective),
        best={m: best.get(m) for m in cfg.task.metrics},
        epochs=done.history,
        majority_baseline=baseline,
        baseline=baseline_kind(cfg),
        **lm_dropped(cfg),
        n_train=n_train,
        n_eval=len(val_split),
        epochs_run=epochs_run,
        train_tokens=done.train_tokens,
        padded_tokens=done.padded_tokens,
        train_examples_per_s=n_train * epochs_run / done.train_seconds if done.train_seconds and epochs_run else None,
        device=str(device),
        precision=precision,
        threads=torch.get_num_threads(),
        versions=library_versions(),
        status=done.status,
        reason=done.reason,
        collapsed=collapsed,
    )


def _rank_curve(cfg: Config, done: Progress) -> List[dict]:
    """A nested trial's rank curve, one entry per rank, ascending: ``r``, ``best_epoch``, ``objective_value``
    (its objective at its own best epoch, metric units), ``best`` (every metric there) and ``epochs`` (one
    record per evaluated epoch); the trial's rank r is the last (its record's own fields)."""
    by_rank = done.ranks | {cfg.lora.r: done}
    out = []
    for b in cfg.lora.nested_ranks:
        best = by_rank[b].best or {}
        out.append(
            {
                "r": b,
                "best_epoch": best.get("epoch"),
                "objective_value": best.get(cfg.task.objective),
                "best": {m: best.get(m) for m in cfg.task.metrics},
                "epochs": by_rank[b].history,
            }
        )
    return out


def trial_dir(cfg: Config, resolved) -> Path:
    """``results/<task>/trials/<model>-r8-q-v-seed0-<hash>``: the hash covers the whole resolved config,
    so two trials that differ in any setting never share a folder."""
    digest = hashlib.sha1(OmegaConf.to_yaml(resolved).encode()).hexdigest()[:8]
    return results_root(cfg) / cfg.task.name / "trials" / f"{cfg.model.name}-{trial_name(cfg)}-{digest}"


def main(args: List[str]) -> int:
    cfg, resolved = compose(args)
    run_dir = trial_dir(cfg, resolved)
    m = run_trial(cfg, resolved, run_dir)
    if dropped_line(cfg):  # a sweep says it once, at its start (sweep/driver.py)
        print(dropped_line(cfg))
    best = ", ".join(f"{k} {v:.4f}" for k, v in m.best.items() if v is not None)
    print(
        f"{m.task} {m.model} {describe_method(m)} seed={m.seed}: "
        f"status {m.status}{' (' + m.reason + ')' if m.reason else ''}"
        + (f" ({COLLAPSED})" if m.collapsed else "")
        + "; "
        + (f"best epoch {m.best_epoch}: {best}; " if m.best_epoch is not None else "no epoch evaluated; ")
        + f"trainable {m.trainable_params:,} ({describe_params(m)}); "
        f"train {m.train_flops:.3e} FLOPs in {m.train_seconds:.1f} s; eval {m.eval_seconds:.1f} s"
    )
    print(f"results: {run_dir}")
    return 0 if m.status == Status.OK else 1


if __name__ == "__main__":
    run_cli(main)
