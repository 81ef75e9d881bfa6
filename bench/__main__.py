"""Trial throughput: our trial loop against the baseline a user would write today, on one configuration.

    python -m bench                      # make bench: MRPC, embedded MiniLM, r=8 on q,v, 115 steps
    python -m bench --steps 30           # a quicker look
    python -m bench --steps 115 train.batch_size=16
    python -m bench --only sweep         # only the sweep-throughput line (bench/sweep_throughput.py)

Both runs train r=8 LoRA on Wq, Wv (and the head) of the embedded model, from the same seed, with the
same batch size, learning rate, warm-up and decay, for the same number of optimisation steps over the
same first ``steps × batch_size`` MRPC training examples, in this one process:

1. baseline: ``transformers.Trainer`` on a peft LoRA model with default settings (fp32, dynamic
   padding by ``DataCollatorWithPadding``, random batches, no length grouping);
2. ours: ``sweep.trial.run_trial`` with the trial's default settings.

For each it prints training examples/s, real (non-padding) tokens/s, executed training FLOPs and
GFLOP/s, the fraction of this machine's matrix-multiply peak (a large ``torch.matmul`` timed in the same
run, fp32 and, where the CPU computes it natively, bf16), peak memory, and validation accuracy after
the schedule (the full validation split, evaluated the same way for both). The last line is the ratio of
our training examples/s to the baseline's. Then ``bench/sweep_throughput.py`` measures a small sweep's
trials/hour with 1 worker × 2 threads and 2 workers × 1 thread. A table and a JSON record go to
``results/bench/``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import datetime, timezone
from typing import Dict, List

import numpy as np
import torch

from bench.sweep_throughput import sweep_throughput
from sweep.cli import compose, run_cli
from sweep.data import Batches, take, task_data
from sweep.faults import atomic_write
from sweep.flops import FlopModel
from sweep.metrics import compute_metrics
from sweep.paths import results_root
from sweep.runtime import library_versions, native_bf16, resolve_device
from sweep.trial import evaluate, run_trial


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """The machine's achieved matrix-multiply rate in GFLOP/s: the best of square ``torch.matmul`` of
    sizes 256 to 4096 (2n³ FLOPs each), each timed for about ``seconds``."""
    best = 0.0
    for n in (256, 512, 1024, 2048, 4096):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        for _ in range(2):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


class PeakRSS:
    """Peak resident memory of this process (MB) while the block runs, sampled every 5 ms from
    /proc/self/statm (the process is shared by both runs, so the increase over the start is reported too)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> float:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def baseline(cfg, train_split, val_split, steps: int) -> Dict[str, float]:
    """transformers.Trainer + peft LoRA, default settings, the same schedule as ours."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from sweep.family import with_family
    from sweep.modeling import load_base_model, load_tokenizer, target_module_names

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    torch.manual_seed(cfg.train.seed)
    base = load_base_model(cfg.model, cfg.task.label_names)
    model_cfg = with_family(cfg.model, base.config.model_type)
    names = target_module_names(base, cfg.lora.targets, model_cfg)
    model = get_peft_model(
        base,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=names,
            modules_to_save=list(model_cfg.head),
        ),
    )
    shapes: List[tuple] = []
    model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask", "label") if c in train_split.column_names]
    args = TrainingArguments(
        output_dir=str(results_root(cfg) / "bench" / "trainer"),
        per_device_train_batch_size=cfg.train.batch_size,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=int(np.ceil(cfg.train.warmup_ratio * steps)),
        max_steps=steps,
        seed=cfg.train.seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        max_grad_norm=cfg.train.max_grad_norm or 0.0,
        use_cpu=resolve_device(cfg).type == "cpu",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_split.select_columns(columns),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    with PeakRSS() as mem:
        out = trainer.train()
    seconds = out.metrics["train_runtime"]
    device = resolve_device(cfg)
    flops = FlopModel(model, _probe(train_split, device), train=True)
    preds = evaluate(
        model, Batches(val_split, cfg.train.eval_batch_size, tokenizer.pad_token_id or 0, shuffle=False), device, "fp32"
    )
    return {
        "examples": len(train_split),
        "seconds": seconds,
        "train_flops": sum(flops(b, n) for b, n in shapes),
        "real_tokens": sum(train_split["length"]),
        "padded_tokens": sum(b * n for b, n in shapes),
        "peak_mem_mb": mem.peak,
        "mem_increase_mb": mem.peak - mem.start,
        **compute_metrics(cfg.task.metrics, preds, np.asarray(val_split["label"])),
    }


def _probe(split, device) -> Dict[str, torch.Tensor]:
    batch = next(Batches(split.select(range(2)), 2, 0, shuffle=False).epoch())
    return {k: v.to(device) for k, v in batch.items() if k != "index"}


def ours(cfg, resolved, train_split, steps: int) -> Dict[str, float]:
    """Our trial loop with its defaults, on the same examples and schedule."""
    run_dir = results_root(cfg) / "bench" / "ours"
    with PeakRSS() as mem:
        m = run_trial(cfg, resolved, run_dir, progress=False)
    assert m.epochs_run == 1 and m.n_train == len(train_split)
    return {
        "examples": m.n_train,
        "seconds": m.train_seconds,
        "train_flops": m.train_flops,
        "real_tokens": m.train_tokens,
        "padded_tokens": m.padded_tokens,
        "peak_mem_mb": mem.peak,
        "mem_increase_mb": mem.peak - mem.start,
        **{k: v for k, v in m.epochs[-1].items() if k in m.best},
    }


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", add_help=False)
    parser.add_argument("--steps", type=int, default=115)
    parser.add_argument("--only", choices=("trial", "sweep"), default=None)
    known, overrides = parser.parse_known_args(argv)
    lines, record = [], {}
    if known.only != "sweep":
        trial_lines, record = trial_throughput(known.steps, overrides)
        lines += trial_lines
    if known.only != "trial":
        sweep_lines, record["sweep_throughput"] = sweep_throughput(overrides)
        print("\n".join(sweep_lines))
        lines += sweep_lines
    cfg, _ = compose(["task=mrpc", *overrides])
    out = results_root(cfg) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text, data = "\n".join(lines) + "\n", json.dumps({**record, "versions": library_versions()}, indent=2)
    atomic_write(out / f"bench-{stamp}.txt", lambda tmp: tmp.write_text(text))
    atomic_write(out / f"bench-{stamp}.json", lambda tmp: tmp.write_text(data))
    print(f"written to {out}/bench-{stamp}.txt and .json")
    return 0


def trial_throughput(n_steps: int, overrides: List[str]):
    """Our trial loop against transformers.Trainer + peft; prints and returns the table's lines and a record."""
    cfg, _ = compose(["task=mrpc", *overrides])
    n = n_steps * cfg.train.batch_size
    # ours runs one epoch over exactly the examples the baseline sees
    cfg, resolved = compose(["task=mrpc", *overrides, "train.epochs=1", f"data.max_train_samples={n}"])
    device = resolve_device(cfg)
    data = task_data(cfg)
    train_split, val_split = take(data["train"], n), take(data["validation"], cfg.data.max_eval_samples)
    steps = -(-len(train_split) // cfg.train.batch_size)

    peak = {"fp32": matmul_peak_gflops(torch.float32, device)}
    if native_bf16(device):
        peak["bf16"] = matmul_peak_gflops(torch.bfloat16, device)
    print(
        f"device {device}, {torch.get_num_threads()} threads; matmul peak: "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items())
        + ("" if "bf16" in peak else "; bf16 not native on this CPU (emulated, not measured)")
    )
    print(
        f"MRPC, {cfg.model.name}, r={cfg.lora.r} on {','.join(cfg.lora.targets)}, batch {cfg.train.batch_size}, "
        f"lr {cfg.train.lr:g}, {steps} steps over {len(train_split)} examples, seed {cfg.train.seed}"
    )
    print(
        "ours differs from the baseline in: batches grouped by length (less padding), backbone dropout "
        f"{cfg.train.backbone_dropout} (baseline: the checkpoint's 0.1, which also keeps CPU attention off its "
        "fused kernel), no per-step host sync (the loss is read every 20 steps)"
    )
    runs = {
        "baseline (Trainer+peft)": baseline(cfg, train_split, val_split, steps),
        "ours (sweep.trial)": ours(cfg, resolved, train_split, steps),
    }
    best_peak = max(peak.values())
    header = (
        f"{'run':<24} {'ex/s':>7} {'real tok/s':>10} {'pad×':>5} {'train FLOPs':>11} {'GFLOP/s':>8} "
        f"{'% peak':>7} {'peak MB':>8} {'+MB':>6} {'val acc':>8}"
    )
    lines = [header]
    for name, r in runs.items():
        gflops = r["train_flops"] / r["seconds"] / 1e9
        r.update(
            examples_per_s=r["examples"] / r["seconds"],
            tokens_per_s=r["real_tokens"] / r["seconds"],
            gflops_per_s=gflops,
            peak_fraction=gflops / best_peak,
        )
        lines.append(
            f"{name:<24} {r['examples_per_s']:>7.1f} {r['tokens_per_s']:>10.0f} "
            f"{r['padded_tokens'] / r['real_tokens']:>5.2f} {r['train_flops']:>11.3e} {gflops:>8.1f} "
            f"{100 * r['peak_fraction']:>6.1f}% {r['peak_mem_mb']:>8.0f} {r['mem_increase_mb']:>6.0f} "
            f"{r['accuracy']:>8.4f}"
        )
    base, us = runs.values()
    ratio = us["examples_per_s"] / base["examples_per_s"]
    lines.append(f"accuracy difference (ours - baseline): {100 * (us['accuracy'] - base['accuracy']):+.2f} points")
    lines.append(f"speed-up: ours / baseline training examples/s = {ratio:.2f}x")
    print("\n".join(lines))
    return lines, {
        "runs": runs,
        "matmul_peak_gflops": peak,
        "ratio": ratio,
        "steps": steps,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    run_cli(main)
