"""The adaptation methods (``method=<name>``, sweep/methods.py) on a tiny random BERT and LLaMA: trainable
parameters against counts by hand from the module shapes (and peft's own count), a trial of each whose saved
result reloads to its validation predictions, and the one-line refusals of bad method settings."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import FF, KV, LAYERS, VOCAB, D

from sweep.cli import compose
from sweep.errors import UserError
from sweep.methods import apply_method, describe_method, describe_params, load_trained
from sweep.modeling import family_applied, load_base_model, parameter_counts
from sweep.trial import evaluate, run_trial, trial_dir

POSITIONS, TYPES = 128, 2
LAYER_NORM = 2 * D  # weight and bias
#: BertForSequenceClassification's head: pooler (D→D) and classifier (D→2)
HEAD = D * D + D + 2 * D + 2
EMBEDDINGS = (VOCAB + POSITIONS + TYPES) * D + LAYER_NORM
#: one BERT layer: Wq, Wk, Wv, Wo with biases, two LayerNorms, the MLP's up (D→FF) and down (FF→D) with biases
LAYER = 4 * (D * D + D) + 2 * LAYER_NORM + (D * FF + FF) + (FF * D + D)
BIASES = D + LAYERS * (4 * D + 2 * D + FF + D)  # embedding LayerNorm; per layer q,k,v,o, two LayerNorms, up, down

#: (method overrides, trained parameters outside the head, by hand)
COUNTS = [
    (["method=lora", "lora.r=2"], LAYERS * 2 * 2 * (D + D)),  # r·(d+k) on Wq, Wv
    (["method=dora", "lora.r=2"], LAYERS * 2 * (2 * (D + D) + D)),  # + a magnitude per output (Liu et al. 2024)
    (["method=adalora", "lora.r=2"], LAYERS * 2 * (3 * (D + D) + 3)),  # init_r = ⌈1.5·2⌉ = 3: P, Q and Λ
    (["method=vera", "method.vera_r=16"], LAYERS * 2 * (D + 16)),  # b (d_out) and d (r) per matrix
    (["method=fourierft", "method.n_frequency=100"], LAYERS * 2 * 100),  # n coefficients per matrix
    (["method=ia3"], LAYERS * (D + D + FF)),  # k and v outputs, down's input (FF)
    (["method=bitfit"], BIASES),  # every bias outside the head (the head trains whole)
    (["method=head"], 0),
    (["method=full"], EMBEDDINGS + LAYERS * LAYER),
]


@pytest.fixture(scope="module")
def bert(tiny_bert):
    cfg = compose([f"model.name_or_path={tiny_bert}"])[0]
    torch.manual_seed(0)
    return load_base_model(cfg.model, ["0", "1"])


def _adapted(base, folder, overrides, steps=10):
    cfg = compose([f"model.name_or_path={folder}", *overrides])[0]
    model_cfg = family_applied(base, cfg.model)
    return apply_method(copy.deepcopy(base), cfg, model_cfg, steps), model_cfg


def test_the_hand_count_of_the_tiny_bert_is_its_size(bert):
    assert sum(p.numel() for p in bert.parameters()) == EMBEDDINGS + LAYERS * LAYER + HEAD


@pytest.mark.parametrize("overrides, expected", COUNTS, ids=[c[0][0] for c in COUNTS])
def test_trainable_parameters_by_hand(bert, tiny_bert, overrides, expected):
    model, model_cfg = _adapted(bert, tiny_bert, overrides)
    counts = parameter_counts(model, model_cfg.head)
    assert counts["lora_params"] == expected
    assert counts["head_params"] == HEAD
    assert counts["trainable_params"] == expected + HEAD
    if hasattr(model, "get_nb_trainable_parameters"):  # peft's own count, a second method
        assert model.get_nb_trainable_parameters()[0] == counts["trainable_params"]
        # what peft adds: the trained parameters (VeRA's shared A and B are buffers), and AdaLoRA's frozen
        # ``ranknum`` of every matrix (one number each)
        added = expected + (LAYERS * 2 if overrides[0] == "method=adalora" else 0)
        assert counts["total_params"] == EMBEDDINGS + LAYERS * LAYER + HEAD + added
    else:
        assert counts["total_params"] == EMBEDDINGS + LAYERS * LAYER + HEAD  # nothing added


def test_prefix_tuning_counts_its_virtual_tokens(tiny_lm):
    """Prefix tuning on a decoder: prefix_length vectors of every layer's keys and values; the tiny LLaMA's
    key-value width is one head of 16 (``KV``), peft's prefix holds a key and a value per layer."""
    cfg = compose([f"model.name_or_path={tiny_lm}", "task=sft", "method=prefix", "method.prefix_length=5"])[0]
    base = load_base_model(cfg.model, None)
    model = apply_method(base, cfg, family_applied(base, cfg.model), 10)
    counts = parameter_counts(model)
    assert counts["trainable_params"] == 5 * LAYERS * 2 * KV == model.get_nb_trainable_parameters()[0]
    assert counts["head_params"] == 0


def test_fourierft_refuses_more_coefficients_than_a_matrix_has(bert, tiny_bert):
    with pytest.raises(
        UserError, match=rf"^method.n_frequency=2000 is more spectral coefficients than .* \({D * D:,}\)"
    ):
        _adapted(bert, tiny_bert, ["method=fourierft", "method.n_frequency=2000"])


def test_prefix_tuning_refuses_an_encoder_in_one_line(bert, tiny_bert):
    with pytest.raises(UserError, match=r"^method=prefix on a classification task needs a model whose forward takes"):
        _adapted(bert, tiny_bert, ["method=prefix"])


RELOADED = [c[0] for c in COUNTS]


@pytest.mark.parametrize("overrides", RELOADED, ids=[o[0] for o in RELOADED])
def test_a_trained_method_reloads_to_its_validation_predictions(tiny, tiny_bert, overrides):
    """A tiny trial of each method (the tiny BERT, 64 MRPC examples, a learning rate that moves it), reloaded
    from its saved adapter or model onto a fresh base: the same validation predictions as the trial saved."""
    cfg, resolved = compose([*tiny, f"model.name_or_path={tiny_bert}", "train.lr=1e-2", *overrides])
    run_dir = trial_dir(cfg, resolved)
    record = run_trial(cfg, resolved, run_dir, progress=False)
    assert record.method == cfg.method.name and record.status == "ok"
    saved = np.load(run_dir / "val_predictions.npy")
    from test_trial import _val_split

    from sweep.data import Batches

    torch.manual_seed(123)  # a fresh random head, were the saved one not loaded
    model = load_trained(run_dir, cfg, ["0", "1"])
    preds = evaluate(model, Batches(_val_split(cfg), 8, 0, shuffle=False), torch.device("cpu"), "fp32")
    assert np.array_equal(preds, saved)
    assert record.best["accuracy"] == pytest.approx(float((saved == np.asarray(_val_split(cfg)["label"])).mean()))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["method=foo"],
            "unknown method 'foo'; valid: adalora, bitfit, dora, fourierft, full, head, ia3, lora, prefix, vera",
        ),
        (
            ["method=prefix", "method.prefix_length=0"],
            "method.prefix_length=0 is invalid: it must be a positive integer or null",
        ),
        (
            ["method=ia3", "lora.r=8"],
            "lora.r is a rank, and method=ia3 has none: a rank applies to method=lora, dora, adalora; leave lora.r out",
        ),
        (
            ["method=vera", "lora.r=8"],
            "lora.r is a rank, and method=vera has none (VeRA's shared rank is method.vera_r): a rank applies to "
            "method=lora, dora, adalora; leave lora.r out",
        ),
        (
            ["method=ia3", "method.n_frequency=10"],
            "method.n_frequency=10 is a setting of method=fourierft, not of method=ia3: leave it out, or give method=fourierft",
        ),
        (
            ["method=adalora", "method.tinit=0.5", "method.tfinal=0.5"],
            "method.tinit=0.5 + method.tfinal=0.5 ≥ 1 leaves AdaLoRA no steps to prune its budget in: give fractions that sum below 1",
        ),
        (
            ["method=adalora", "method.init_r=4"],
            "method.init_r=4 is below lora.r=8: AdaLoRA prunes its initial rank down to the target, so give "
            "method.init_r ≥ 8 (or null: ⌈1.5·lora.r⌉)",
        ),
        (
            ["method=full", "lora.nested=true"],
            "lora.nested=true trains nested LoRA ranks (DyLoRA), not method=full: give method=lora or lora.nested=false",
        ),
    ],
)
def test_bad_method_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError) as e:
        compose(overrides)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "fields, method_words, params_words",
    [
        ({}, "r=8 targets=q,v", "LoRA 13,824 + head 1,538"),  # a record written before methods existed
        ({"method": "lora", "lora_init": "kaiming"}, "r=8 targets=q,v", "LoRA 13,824 + head 1,538"),
        ({"method": "dora", "lora_init": "pissa"}, "dora r=8 targets=q,v init=pissa", "dora 13,824 + head 1,538"),
        ({"method": "head", "r": None, "targets": [], "lora_params": 0}, "head", "head 1,538"),
    ],
)
def test_a_trials_words_name_its_method_and_init(fields, method_words, params_words):
    """``make trial``'s line: the method and init when not LoRA's defaults; head only trains the head alone."""
    record = SimpleNamespace(**{"r": 8, "targets": ["q", "v"], "lora_params": 13824, "head_params": 1538, **fields})
    assert (describe_method(record), describe_params(record)) == (method_words, params_words)
