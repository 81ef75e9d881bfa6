"""Nested-rank training (sweep/nested.py, DyLoRA): the truncation's maths against a hand computation, its
gradients, the rank draws, and one real nested trial: every rank saved as a peft adapter that reloads to its
predictions, and a SIGKILLed nested trial that resumes bit-identically."""

import json

import numpy as np
import pytest
import torch
from conftest import kill_when, run_module

from sweep.cli import compose
from sweep.nested import RankTruncation, nested_ranks, step_ranks, truncated_state
from sweep.trial import CHECKPOINT, evaluate, run_trial, trial_dir


@pytest.mark.parametrize(
    "r_max, given, expected",
    [
        (64, None, [1, 2, 4, 8, 16, 32, 64]),
        (12, None, [1, 2, 4, 8, 12]),  # r itself closes the powers of two
        (1, None, [1]),
        (8, [8, 2, 2, 1], [1, 2, 8]),  # sorted, once each
    ],
)
def test_nested_ranks(r_max, given, expected):
    assert nested_ranks(r_max, given) == expected


@pytest.mark.parametrize("given", [[1, 2], [0, 4], [1, 2.5, 4], [4, 8]])
def test_nested_ranks_refuses_ranks_that_are_not_the_adapters(given):
    with pytest.raises(ValueError, match=r"lora.nested_ranks=.* positive integers up to lora.r=4"):
        nested_ranks(4, given)


def test_a_bad_nested_rank_is_one_line_before_any_training(tiny):
    from conftest import run_main

    from sweep import trial as trial_module

    ran = run_main(trial_module.main, *tiny, "lora.r=4", "lora.nested=true", "lora.nested_ranks=[1,8]")
    assert ran.returncode != 0 and "lora.nested_ranks=[1, 8] is invalid" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1


def test_step_ranks_are_uniform_and_a_pure_function_of_seed_and_epoch():
    ranks = [1, 2, 4, 8]
    a = step_ranks(ranks, seed=0, epoch=1, steps=4000)
    assert np.array_equal(a, step_ranks(ranks, seed=0, epoch=1, steps=4000))  # what a resumed epoch draws
    assert not np.array_equal(a, step_ranks(ranks, seed=0, epoch=2, steps=4000))
    assert not np.array_equal(a, step_ranks(ranks, seed=1, epoch=1, steps=4000))
    counts = np.array([(a == b).sum() for b in ranks])
    assert set(np.unique(a)) == set(ranks) and np.all(np.abs(counts - 1000) < 4 * np.sqrt(1000 * 0.75))


def _lora_linear(r: int, alpha: float, rslora: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5))
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"], use_rslora=rslora))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # B is zero at the start: give it values to truncate
    return model, layer


@pytest.mark.parametrize("rslora, b, factor", [(False, 3, 16 / 3), (False, 8, 2.0), (True, 4, 8.0), (True, 1, 16.0)])
def test_truncation_is_the_rank_b_adapter_computed_by_hand(rslora, b, factor):
    model, layer = _lora_linear(8, 16.0, rslora)
    x = torch.randn(3, 6)
    W, bias = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (8, 6), (5, 8)
    truncation = RankTruncation(model, 8, rslora)
    truncation.set(b)
    by_hand = x @ W.T + bias + factor * (x @ A[:b].T @ B[:, :b].T)  # ΔW_b = B[:, :b]·A[:b, :], scaled for rank b
    assert torch.allclose(model(x), by_hand, atol=1e-5)
    out = model(x).sum()
    out.backward()  # the masked components get no gradient: training rank b leaves the rest alone
    assert torch.all(layer.lora_A["default"].weight.grad[b:] == 0) and torch.all(
        layer.lora_B["default"].weight.grad[:, b:] == 0
    )
    assert torch.any(layer.lora_A["default"].weight.grad[:b] != 0)
    truncation.remove()  # the whole adapter again, at peft's own scaling, and no hook
    assert layer.scaling["default"] == (16.0 / 8**0.5 if rslora else 2.0)
    whole = x @ W.T + bias + layer.scaling["default"] * (x @ A.T @ B.T)
    assert torch.allclose(model(x), whole, atol=1e-5)


def test_truncated_state_cuts_a_rows_and_b_columns():
    state = {
        "m.0.lora_A.weight": torch.arange(8 * 6.0).reshape(8, 6),
        "m.0.lora_B.weight": torch.arange(5 * 8.0).reshape(5, 8),
        "classifier.weight": torch.ones(2, 5),
    }
    cut = truncated_state(state, 3)
    assert torch.equal(cut["m.0.lora_A.weight"], state["m.0.lora_A.weight"][:3])
    assert torch.equal(cut["m.0.lora_B.weight"], state["m.0.lora_B.weight"][:, :3])
    assert torch.equal(cut["classifier.weight"], state["classifier.weight"])


def _val_batches(cfg):
    from sweep.data import Batches, take, task_data

    return Batches(take(task_data(cfg)["validation"], cfg.data.max_eval_samples), 8, 0, shuffle=False)


def test_a_nested_trial_screens_every_rank_and_saves_each_as_a_peft_adapter(tiny):
    from peft import PeftModel

    from sweep.modeling import load_base_model

    args = tiny + ["lora.r=4", "lora.nested=true", "train.epochs=2"]
    cfg, resolved = compose(args)
    run_dir = trial_dir(cfg, resolved)
    m = run_trial(cfg, resolved, run_dir, progress=False)
    assert m.nested and [c["r"] for c in m.rank_curve] == [1, 2, 4] and run_dir.name.startswith("minilm-r4-q-v-nested")
    own = m.rank_curve[-1]  # the trial's own rank is its record
    assert (
        own["objective_value"] == m.objective_value and own["epochs"] == m.epochs and own["best_epoch"] == m.best_epoch
    )
    assert m.lora_params == 4 * 6 * 2 * (384 + 384)  # it trained rank 4 on Wq,Wv: r·(d+k) per matrix
    # executed FLOPs: training those of an ordinary rank-4 trial (masked components are computed), evaluation
    # one validation pass per rank and epoch
    plain = run_trial(*compose([*tiny, "lora.r=4", "train.epochs=2"]), run_dir.parent / "plain", progress=False)
    assert m.train_flops == plain.train_flops and m.eval_flops == 3 * plain.eval_flops
    labels = np.asarray(_val_batches(cfg).labels)
    for c in m.rank_curve:
        folder = run_dir / ("adapter" if c["r"] == 4 else f"adapter-r{c['r']}")
        saved = np.load(run_dir / ("val_predictions.npy" if c["r"] == 4 else f"val_predictions-r{c['r']}.npy"))
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == c["r"]
        torch.manual_seed(123)  # a fresh random head: only the saved one reproduces the predictions
        model = PeftModel.from_pretrained(load_base_model(cfg.model, cfg.task.label_names), str(folder))
        assert np.array_equal(evaluate(model, _val_batches(cfg), torch.device("cpu"), "fp32"), saved)
        assert c["objective_value"] == pytest.approx(float((saved == labels).mean()))
        assert c["objective_value"] == max(e["accuracy"] for e in c["epochs"])


@pytest.mark.slow  # a SIGKILL and two more trials; the default suite kills an ordinary trial (tests/test_sweep.py)
def test_a_killed_nested_trial_resumes_bit_identically(tiny, tmp_path):
    args = tiny + ["lora.r=4", "lora.nested=true", "train.epochs=2", "data.max_train_samples=160"]
    cfg, resolved = compose(args)
    reference = run_trial(cfg, resolved, tmp_path / "reference", progress=False)
    run_dir = trial_dir(cfg, resolved)
    kill_when(args, (run_dir / CHECKPOINT).exists, tmp_path / "killed.log", timeout=300, module="sweep.trial")
    assert (run_dir / CHECKPOINT).exists() and not (run_dir / "metrics.json").exists()
    done = run_module("sweep.trial", *args)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["rank_curve"] == json.loads(json.dumps(reference.rank_curve))  # every rank, every epoch
    assert resumed["train_flops"] == reference.train_flops
    for b in (1, 2):
        assert np.array_equal(
            np.load(run_dir / f"val_predictions-r{b}.npy"),
            np.load(tmp_path / "reference" / f"val_predictions-r{b}.npy"),
        )


@pytest.mark.parametrize(
    "draw, trained",
    [
        pytest.param("ranks", {1, 2, 4}, marks=pytest.mark.slow),
        ("every", {1, 2, 3, 4}),
    ],  # the default in the default suite
)
def test_nested_draw_names_the_ranks_the_steps_train(tiny, monkeypatch, draw, trained):
    from sweep import nested

    seen = []
    original = nested.RankTruncation.set
    monkeypatch.setattr(nested.RankTruncation, "set", lambda self, b: (seen.append(b), original(self, b))[1])
    args = tiny + ["lora.r=4", "lora.nested=true", f"lora.nested_draw={draw}", "data.max_train_samples=320"]
    cfg, resolved = compose(args)
    run_trial(cfg, resolved, trial_dir(cfg, resolved), progress=False)
    steps = 320 // 16
    expected = step_ranks(sorted(trained), cfg.train.seed, 0, steps).tolist()  # the draws, then the 3 evaluations
    assert seen == expected + [1, 2, 4, 4] and set(expected) == trained  # then back to r=4 at the end
