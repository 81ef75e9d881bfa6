"""One real trial, shrunk (debug=tiny: 64 MRPC examples, one epoch): outputs, determinism, reload, the LoRA
scaling it records, and its epoch checkpoints (sweep/resume.py)."""

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import kill_when, run_module
from omegaconf import OmegaConf

from sweep.cli import compose
from sweep.data import task_digest
from sweep.record import read_result
from sweep.resume import Progress, load_checkpoint, save_checkpoint
from sweep.trial import CHECKPOINT, _scaling_factor, evaluate, run_trial, trial_dir

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
    assert on_disk == json.loads(json.dumps(m.to_dict())) and read_result(run_dir / "metrics.json") == m
    for key in [
        "task",
        "model",
        "r",
        "lora_alpha",
        "scaling",
        "lora_init",
        "targets",
        "seed",
        "lora_params",
        "head_params",
        "trainable_params",
        "total_params",
        "epochs",
        "best",
        "train_flops",
        "eval_flops",
        "train_seconds",
        "eval_seconds",
        "peak_mem_mb",
        "versions",
        "status",
    ]:
        assert key in on_disk, key
    assert m.status == "ok" and m.reason is None
    assert m.data_digest == task_digest(cfg) and len(m.data_digest) == 16  # the rows it read (test_resume)
    assert m.scaling == "standard" and m.scaling_factor == 16 / 8 == 2.0  # lora_alpha / r (LoRA §4.1)
    assert m.lora_init == "kaiming" and not (run_dir / "init-adapter").exists()  # nothing to convert
    assert m.lora_params == 6 * 2 * 8 * 768 and m.trainable_params == m.lora_params + m.head_params
    assert set(m.best) == {"accuracy", "f1"} and len(m.epochs) == 1
    assert set(m.versions) >= {"torch", "transformers", "peft"}
    # the 32 validation examples form one evaluation batch padded to the longest of them
    width = max(len(x) for x in _val_input_ids(cfg))
    assert m.eval_flops == eval_flops_by_hand(32, width, 8)
    assert m.train_flops > 2 * m.eval_flops  # 64 examples, forward and backward
    assert m.majority_baseline["accuracy"] == pytest.approx(sum(_val_labels(cfg)) / 32)
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.lora.r == 8 and saved.lora.targets == ["q", "v"] and saved.data.max_train_samples == 64
    # the adapter names the hub id the embedded weights mirror; metrics.json keeps the exact folder
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert (
        adapter_config["base_model_name_or_path"]
        == m.base_model_name_or_path
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert os.path.isabs(m.model_path) and os.path.isfile(os.path.join(m.model_path, "config.json"))
    assert m.family == "bert" and m.head == ["pooler", "classifier"]
    assert not (run_dir / CHECKPOINT).exists()


def _val_split(cfg):
    from sweep.data import take, task_data

    data = task_data(cfg)
    return take(data["validation"], cfg.data.max_eval_samples)


def _val_input_ids(cfg):
    return _val_split(cfg)["input_ids"]


def _val_labels(cfg):
    return _val_split(cfg)["label"]


def test_same_seed_same_metrics_other_seed_other_run(tiny, tmp_path):
    _, _, a = trial(tiny)
    _, _, b = trial(tiny[:-1] + [f"results_dir={tmp_path / 'again'}"])
    _, _, c = trial(tiny + ["train.seed=1"])
    assert a.epochs == b.epochs and a.train_flops == b.train_flops
    assert a.epochs[0]["train_loss"] != c.epochs[0]["train_loss"]


@pytest.mark.slow  # the default suite reloads the export as the README does (tests/test_export.py)
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
            logits.append(
                model(
                    input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"]
                ).logits
            )
    assert torch.equal(logits[0], logits[1])
    assert m.best["accuracy"] == pytest.approx(float((saved == np.asarray(split["label"])).mean()))


def test_divergence_ends_the_trial_cleanly(tiny):
    from conftest import run_main

    from sweep import trial as trial_module

    args = [*tiny, "train.lr=1e30", "train.max_grad_norm=null"]
    ran = run_main(trial_module.main, *args)
    cfg, resolved = compose(args)
    m = read_result(trial_dir(cfg, resolved) / "metrics.json")
    assert m.status == "diverged" and "loss became" in m.reason and m.best_epoch is None
    # exit 1 and a result line that says no epoch was evaluated (it printed "best epoch None: ;")
    assert ran.returncode == 1 and "status diverged (training loss became nan in epoch 1" in ran.stdout
    assert "no epoch evaluated; trainable" in ran.stdout and "None" not in ran.stdout


@pytest.mark.slow  # tests/test_sweep.py kills trials mid-epoch too; this one isolates the trial
def test_killed_trial_resumes_from_its_last_epoch(tiny, tmp_path):
    args = tiny + ["train.epochs=3", "data.max_train_samples=160"]
    cfg, resolved = compose(args)
    reference = run_trial(cfg, resolved, tmp_path / "reference", progress=False)
    run_dir = trial_dir(cfg, resolved)
    kill_when(args, (run_dir / CHECKPOINT).exists, tmp_path / "killed.log", timeout=300, module="sweep.trial")
    assert (run_dir / CHECKPOINT).exists() and not (run_dir / "metrics.json").exists()
    done = run_module("sweep.trial", *args)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["epochs"] == reference.epochs  # bit-identical continuation
    assert resumed["train_flops"] == reference.train_flops


def test_stsb_trains_a_regressor(tiny):
    cfg, run_dir, m = trial(tiny + ["task=stsb"])
    preds = np.load(run_dir / "val_predictions.npy")
    labels = np.asarray(_val_labels(cfg), dtype=float)
    assert preds.dtype == np.float32 and preds.shape == labels.shape and np.ptp(preds) > 0
    assert m.status == "ok" and set(m.best) == {"pearson", "spearman"} and m.objective == "pearson"
    # Pearson's r by a second method: numpy's correlation matrix of the saved predictions
    assert m.best["pearson"] == pytest.approx(np.corrcoef(preds, labels)[0, 1], abs=1e-5)
    assert m.majority_baseline == {"pearson": 0.0, "spearman": 0.0}  # a constant (the training mean)
    assert m.head_params == 384 * 384 + 384 + 384 * 1 + 1  # pooler + a single-output regressor


# (r, lora_alpha, scaling, the factor peft must hold, by hand)
SCALING_CASES = [
    (8, 16.0, "standard", 2.0),  # alpha / r
    (2, 1.0, "standard", 0.5),
    (4, 16.0, "rslora", 8.0),  # alpha / sqrt(r) = 16 / 2
    (8, 16.0, "rslora", 5.656854249492381),  # 16 / 2.8284271247461903
]


@pytest.fixture(scope="module")
def minilm():
    from sweep.family import with_family
    from sweep.modeling import load_base_model

    cfg = compose([])[0]
    cfg.model = with_family(cfg.model, "bert")
    torch.manual_seed(0)
    return cfg, load_base_model(cfg.model, cfg.task.label_names)


@pytest.mark.parametrize("r, alpha, scaling, expected", SCALING_CASES)
def test_scaling_factor_is_the_one_peft_applies(minilm, r, alpha, scaling, expected):
    from dataclasses import replace

    from sweep.modeling import apply_lora

    cfg, base = minilm
    lora = replace(cfg.lora, r=r, alpha=alpha, scaling=scaling, targets=["q", "v"])
    model = apply_lora(copy.deepcopy(base), lora, cfg.model)
    assert _scaling_factor(model) == pytest.approx(expected, rel=1e-15)
    # and it is what the layers compute with: a LoRA layer's output minus its base layer's is factor · x·Aᵀ·Bᵀ
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(3, 384)
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
        by_hand = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    torch.testing.assert_close(delta, expected * by_hand, rtol=1e-4, atol=1e-5)


def test_scaling_factor_needs_lora_layers(minilm):
    with pytest.raises(ValueError, match="found \\[\\]"):
        _scaling_factor(minilm[1])


def test_rslora_record_stores_alpha_over_sqrt_r(tiny):
    _, _, m = trial(tiny + ["lora.scaling=rslora", "lora.r=4"])
    assert m.scaling == "rslora" and m.scaling_factor == 16 / math.sqrt(4) == 8.0


#: the layout sweep/trial.py wrote before issue #13 (commit eb0ec33): a run started then, killed, must resume
#: with today's code, and a checkpoint of today's code stays readable by that code
OLD_LAYOUT = ["config", "trainable", "optimizer", "scheduler", "rng", "cuda_rng", "state"]
OLD_STATE_KEYS = [
    "epoch",
    "history",
    "train_flops",
    "eval_flops",
    "train_seconds",
    "eval_seconds",
    "best",
    "best_state",
    "best_preds",
    "train_tokens",
    "padded_tokens",
    "status",
    "reason",
]
VOLATILE = {"train_seconds", "eval_seconds", "train_examples_per_s", "train_tokens_per_s", "peak_mem_mb"}  # timing


class Stop(Exception):
    """Stands for a kill: raised from ``on_epoch``, after the previous epoch's checkpoint was written."""


@pytest.mark.slow  # an upgrade path; test_sweep.py's SIGKILL resumes a current-layout checkpoint in the default suite
def test_interrupted_trial_resumes_from_an_old_layout_checkpoint(tiny, tmp_path):
    args = tiny + ["train.epochs=2"]
    cfg, resolved = compose(args)
    reference = run_trial(cfg, resolved, tmp_path / "reference", progress=False)

    def stop_at_epoch_2(record):
        if record["epoch"] == 2:
            raise Stop

    run_dir = tmp_path / "interrupted"
    with pytest.raises(Stop):
        run_trial(cfg, resolved, run_dir, progress=False, on_epoch=stop_at_epoch_2)
    ckpt = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert list(ckpt) == OLD_LAYOUT and type(ckpt["state"]) is dict and list(ckpt["state"]) == OLD_STATE_KEYS
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["history"] == reference.epochs[:1]
    assert ckpt["config"] == OmegaConf.to_yaml(resolved) and not (run_dir / "metrics.json").exists()

    epochs_seen = []
    resumed = run_trial(cfg, resolved, run_dir, progress=False, on_epoch=lambda r: epochs_seen.append(r["epoch"]))
    assert epochs_seen == [2]  # epoch 1 came from the checkpoint, not from training again
    assert {k: v for k, v in resumed.to_dict().items() if k not in VOLATILE} == {
        k: v for k, v in reference.to_dict().items() if k not in VOLATILE
    }
    assert not (run_dir / CHECKPOINT).exists()


def _tiny_training(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=10)
    return model, optimizer, scheduler


def test_a_checkpoint_of_an_earlier_version_is_the_same_trial(tmp_path):
    """A checkpoint whose saved config lacks a key added since (lora.scaling, at its default) and differs in
    a resumable one (train.threads) is this trial's: it is restored; with lora.scaling=rslora it is not."""
    path, cpu = tmp_path / CHECKPOINT, torch.device("cpu")
    model, optimizer, scheduler = _tiny_training(0)
    older = OmegaConf.create(OmegaConf.to_yaml(compose([])[1]))
    del older.lora["scaling"]
    older.train.threads = 7
    save_checkpoint(path, model, optimizer, scheduler, Progress(epoch=1), OmegaConf.to_yaml(older), cpu)
    fresh, fresh_opt, fresh_sched = _tiny_training(1)
    rslora = OmegaConf.to_yaml(compose(["lora.scaling=rslora"])[1])
    assert load_checkpoint(path, fresh, fresh_opt, fresh_sched, rslora, cpu) is None
    now = OmegaConf.to_yaml(compose([])[1])
    assert load_checkpoint(path, fresh, fresh_opt, fresh_sched, now, cpu).epoch == 1
    assert torch.equal(fresh[1].weight, model[1].weight)


def test_checkpoint_round_trip_restores_everything(tmp_path):
    path, cpu = tmp_path / CHECKPOINT, torch.device("cpu")
    model, optimizer, scheduler = _tiny_training(0)
    model(torch.ones(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    done = Progress(
        epoch=1, history=[{"epoch": 1, "train_loss": 0.5}], train_flops=10**15, train_tokens=7, best_preds=np.arange(3)
    )
    config_a, config_b = (OmegaConf.to_yaml(compose(args)[1]) for args in ([], ["lora.alpha=32"]))
    save_checkpoint(path, model, optimizer, scheduler, done, config_a, cpu)
    expected_draw = torch.rand(4)  # the RNG after saving: a resumed run must draw the same numbers

    fresh, fresh_opt, fresh_sched = _tiny_training(1)
    assert load_checkpoint(path, fresh, fresh_opt, fresh_sched, config_b, cpu) is None  # another trial
    assert not torch.equal(fresh[1].weight, model[1].weight)  # … leaves everything as it was
    assert load_checkpoint(tmp_path / "none.pt", fresh, fresh_opt, fresh_sched, config_a, cpu) is None

    back = load_checkpoint(path, fresh, fresh_opt, fresh_sched, config_a, cpu)
    assert torch.equal(torch.rand(4), expected_draw)
    assert back.epoch == 1 and back.history == done.history and back.train_flops == 10**15 and back.train_tokens == 7
    assert np.array_equal(back.best_preds, np.arange(3)) and back.status == "ok" and back.reason is None
    assert torch.equal(fresh[1].weight, model[1].weight) and torch.equal(fresh[1].bias, model[1].bias)
    assert not torch.equal(fresh[0].weight, model[0].weight)  # frozen tensors are not checkpointed
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert list(Progress().to_dict()) == OLD_STATE_KEYS
