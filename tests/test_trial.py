"""One real trial, shrunk (debug=tiny: 64 MRPC examples, one epoch): outputs, determinism, reload."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import PROJECT, run_module
from sweep.cli import compose
from sweep.trial import CHECKPOINT, evaluate, run_trial, trial_dir

D, FF, LAYERS = 384, 1536, 6


def eval_flops_by_hand(batch: int, length: int, r: int) -> int:
    """Forward FLOPs of MiniLM with LoRA rank r on q and v: base matmuls, attention, LoRA's x·Aᵀ·Bᵀ
    (2·L·r·(d+k) per adapted matrix), pooler and classifier."""
    per_layer = 2 * length * (4 * D * D + 2 * D * FF) + 4 * length * length * D + 2 * 2 * length * r * 2 * D
    return batch * (LAYERS * per_layer + 2 * (D * D + 2 * D))


def trial(overrides):
    cfg, resolved = compose(overrides)
    run_dir = trial_dir(cfg, resolved)
    return cfg, run_dir, run_trial(cfg, resolved, run_dir, progress=False)


def test_metrics_json_holds_what_was_promised(tiny):
    cfg, run_dir, m = trial(tiny)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for key in ["task", "model", "r", "lora_alpha", "scaling", "targets", "seed", "lora_params", "head_params",
                "trainable_params", "total_params", "epochs", "best", "train_flops", "eval_flops", "train_seconds",
                "eval_seconds", "peak_mem_mb", "versions", "status"]:
        assert key in m, key
    assert m["status"] == "ok" and m["reason"] is None
    assert m["lora_params"] == 6 * 2 * 8 * 768 and m["trainable_params"] == m["lora_params"] + m["head_params"]
    assert set(m["best"]) == {"accuracy", "f1"} and len(m["epochs"]) == 1
    assert set(m["versions"]) >= {"torch", "transformers", "peft"}
    # the 32 validation examples form one evaluation batch padded to the longest of them
    width = max(len(x) for x in _val_input_ids(cfg))
    assert m["eval_flops"] == eval_flops_by_hand(32, width, 8)
    assert m["train_flops"] > 2 * m["eval_flops"]  # 64 examples, forward and backward
    assert m["majority_baseline"]["accuracy"] == pytest.approx(sum(_val_labels(cfg)) / 32)
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.lora.r == 8 and saved.lora.targets == ["q", "v"] and saved.data.max_train_samples == 64
    # the adapter names the hub id the embedded weights mirror; metrics.json keeps the exact folder
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == m["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert os.path.isabs(m["model_path"]) and os.path.isfile(os.path.join(m["model_path"], "config.json"))
    assert m["family"] == "bert" and m["head"] == ["pooler", "classifier"]
    assert not (run_dir / CHECKPOINT).exists()


def _val_split(cfg):
    from sweep.data import take, tokenized_glue

    data = tokenized_glue(cfg.task.name, cfg.data.dir, tuple(cfg.task.text_fields), tuple(cfg.task.label_names),
                          cfg.model.name_or_path, cfg.data.max_length)
    return take(data["validation"], cfg.data.max_eval_samples)


def _val_input_ids(cfg):
    return _val_split(cfg)["input_ids"]


def _val_labels(cfg):
    return _val_split(cfg)["label"]


def test_same_seed_same_metrics_other_seed_other_run(tiny, tmp_path):
    _, _, a = trial(tiny)
    _, _, b = trial(tiny[:-1] + [f"results_dir={tmp_path / 'again'}"])
    _, _, c = trial(tiny + ["train.seed=1"])
    assert a["epochs"] == b["epochs"] and a["train_flops"] == b["train_flops"]
    assert a["epochs"][0]["train_loss"] != c["epochs"][0]["train_loss"]


def test_reloaded_adapter_reproduces_the_predictions(tiny):
    from peft import PeftModel

    from sweep.data import Batches
    from sweep.modeling import load_base_model

    cfg, run_dir, m = trial(tiny)
    saved = np.load(run_dir / "val_predictions.npy")
    split = _val_split(cfg)
    logits = []
    for seed in (123, 456):  # a fresh random head each time: only the saved one can give equal logits
        torch.manual_seed(seed)
        model = PeftModel.from_pretrained(load_base_model(cfg.model, cfg.task.label_names), str(run_dir / "adapter"))
        batches = Batches(split, 8, 0, shuffle=False)
        first = evaluate(model, batches, torch.device("cpu"), "fp32")
        assert np.array_equal(first, evaluate(model, batches, torch.device("cpu"), "fp32"))  # evaluation is stable
        assert np.array_equal(first, saved)
        model.eval()
        with torch.no_grad():
            b = next(batches.epoch())
            logits.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                token_type_ids=b["token_type_ids"]).logits)
    assert torch.equal(logits[0], logits[1])
    assert m["best"]["accuracy"] == pytest.approx(float((saved == np.asarray(split["label"])).mean()))


def test_divergence_ends_the_trial_cleanly(tiny):
    _, run_dir, m = trial(tiny + ["train.lr=1e30", "train.max_grad_norm=null"])
    assert m["status"] == "diverged" and "loss became" in m["reason"]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.slow  # tests/test_sweep.py kills trials mid-epoch too; this one isolates the trial
def test_killed_trial_resumes_from_its_last_epoch(tiny, tmp_path):
    args = tiny + ["train.epochs=3", "data.max_train_samples=160"]
    cfg, resolved = compose(args)
    reference = run_trial(cfg, resolved, tmp_path / "reference", progress=False)
    run_dir = trial_dir(cfg, resolved)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep.trial", *args], cwd=PROJECT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / CHECKPOINT).exists() and not (run_dir / "metrics.json").exists()
    done = run_module("sweep.trial", *args)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["epochs"] == reference["epochs"]  # bit-identical continuation
    assert resumed["train_flops"] == reference["train_flops"]


def test_stsb_trains_a_regressor(tiny):
    cfg, run_dir, m = trial(tiny + ["task=stsb"])
    preds = np.load(run_dir / "val_predictions.npy")
    labels = np.asarray(_val_labels(cfg), dtype=float)
    assert preds.dtype == np.float32 and preds.shape == labels.shape and np.ptp(preds) > 0
    assert m["status"] == "ok" and set(m["best"]) == {"pearson", "spearman"} and m["objective"] == "pearson"
    # Pearson's r by a second method: numpy's correlation matrix of the saved predictions
    assert m["best"]["pearson"] == pytest.approx(np.corrcoef(preds, labels)[0, 1], abs=1e-5)
    assert m["majority_baseline"] == {"pearson": 0.0, "spearman": 0.0}  # a constant (the training mean)
    assert m["head_params"] == 384 * 384 + 384 + 384 * 1 + 1  # pooler + a single-output regressor
