"""LoRA initialisations (``lora.init``, sweep/inits.py) on tiny random models: each init's matrices against an
independent computation (B = 0 and the base model's function at step 0; A's spread; PiSSA's top-r SVD part;
OLoRA's QR; EVA's principal components of the layer inputs and its rank budget), the refusals, the conversion
that lets a PiSSA/OLoRA adapter reload onto the original base, and a tiny real trial per init whose adapter
reloads onto a fresh base to its validation predictions."""

import copy
import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import save_tiny_lm

from analysis.export import validation_predictions
from sweep import inits
from sweep.cli import compose
from sweep.data import Batches, class_names, task_data
from sweep.errors import UserError
from sweep.inits import initialize_eva, save_adapter, save_initial
from sweep.metrics import compute_metrics
from sweep.modeling import apply_lora, check_limits, family_applied, load_base_model, load_tokenizer
from sweep.trial import base_model_baseline, completion_tokens, evaluate, run_trial, trial_batches, trial_dir

R, ALPHA = 4, 8.0  # LoRA scaling s = alpha / r = 2
INITS = ["kaiming", "gaussian", "pissa", "olora", "eva"]


@pytest.fixture(scope="module")
def bert(tiny_bert, glue_dir):
    """Overrides of a tiny-BERT trial (``tests/conftest.py``'s ``tiny_bert``: d_model 32, 2 layers) on 64 MRPC
    examples."""
    return [
        "debug=tiny",
        f"model.name_or_path={tiny_bert}",
        f"data.dir={glue_dir}",
        f"lora.r={R}",
        f"lora.alpha={ALPHA}",
    ]


def wrapped(overrides, init: str, *extra: str):
    """(the base model, a copy of it wrapped with LoRA of ``init`` and initialised, the training batches), both
    in eval mode; EVA's data pass included."""
    cfg, _ = compose([*overrides, f"lora.init={init}", *extra])
    torch.manual_seed(0)
    base = load_base_model(cfg.model, class_names(cfg)).eval()
    model = apply_lora(copy.deepcopy(base), cfg.lora, cfg.model)
    batches = trial_batches(cfg, task_data(cfg), load_tokenizer(cfg.model.name_or_path).pad_token_id)[2]
    if init == "eva":
        initialize_eva(model, batches)
    return base, model.eval(), batches


def lora_layers(model) -> dict:
    """module name in the base model -> its peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def inputs_of(batches: Batches) -> dict:
    """The first training batch as the model takes it."""
    batch = next(batches.epoch(0))
    batch.pop("index")
    batch.pop("labels")
    return batch


def _zero(w, r):
    return torch.zeros_like(w)


def _top_svd(w, r):
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def _qr(w, r):
    q, upper = torch.linalg.qr(w)
    return ALPHA / R * q[:, :r] @ upper[:r]


# (init, s·B·A at the start from the original W (out × in) by hand: what the base weights lose)
STARTS = [
    ("kaiming", _zero),
    ("gaussian", _zero),
    ("pissa", _top_svd),  # the top-r singular part of W (Meng et al. 2024)
    ("olora", _qr),  # s · Q[:, :r] · R[:r] of W = Q·R (Büyükakyüz 2024)
    ("eva", _zero),
]


@pytest.mark.parametrize("init, start", STARTS, ids=[c[0] for c in STARTS])
def test_the_start_by_hand_and_the_base_models_function_at_step_0(bert, init, start):
    base, model, batches = wrapped(bert, init)
    layers = lora_layers(model)
    assert len(layers) == 4  # q and v of two layers
    for name, layer in layers.items():
        w = base.get_submodule(name).weight.double()
        a, b = (getattr(layer, f"lora_{x}")["default"].weight.double() for x in "AB")
        update = layer.scaling["default"] * b @ a
        torch.testing.assert_close(update, start(w, R), rtol=0, atol=1e-5)
        w_res = layer.get_base_layer().weight.double()
        torch.testing.assert_close(w_res + update, w, rtol=0, atol=1e-6)  # W_res + s·B·A = W
        if start is _zero:
            assert torch.count_nonzero(b) == 0 and torch.equal(w_res, w) and torch.count_nonzero(a) == a.numel()
    batch = inputs_of(batches)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=0, atol=1e-5)


# (init, the s.d. of A's entries by hand for A of r × k, whether every entry lies within kaiming's bound 1/sqrt(k))
SPREADS = [
    ("kaiming", lambda r, k: 1 / math.sqrt(3 * k), True),  # U(−1/sqrt(k), 1/sqrt(k)): peft's kaiming_uniform_(a=√5)
    ("gaussian", lambda r, k: 1 / r, False),  # N(0, (1/r)²): peft's reset_lora_parameters
]


@pytest.mark.parametrize("init, sd, bounded", SPREADS, ids=[c[0] for c in SPREADS])
def test_a_has_the_spread_peft_documents(bert, init, sd, bounded):
    _, model, _ = wrapped(bert, init, "lora.targets=all-linear")
    z, within = [], []
    for layer in lora_layers(model).values():
        a = layer.lora_A["default"].weight.detach()
        r, k = a.shape
        z.append((a / sd(r, k)).flatten())
        within.append(a.abs().max().item() <= 1 / math.sqrt(k))
    z = torch.cat(z)
    # 1,792 entries: the pooled s.d. in units of the one by hand is 1 within 6% (over 3 standard errors of 1.7%)
    assert len(z) == 1792 and z.std().item() == pytest.approx(1.0, abs=0.06) and abs(z.mean().item()) < 0.1
    assert set(within) == {bounded}


def principal_components(x: torch.Tensor):
    """(right-singular vectors (rows), explained variance ratios) of ``x`` (tokens × features) centred."""
    x = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return vh, s**2 / (s**2).sum()


def eva_by_hand(layer_inputs: dict, r: int) -> tuple:
    """EVA's ranks and components from each module's inputs (name -> tokens × features), by hand: every module
    offers its first round(2r) explained variance ratios (rho = 2), the r · (number of modules) largest of all
    win, and a module's rank is how many of its own won (Paischer et al. 2024, §3.2)."""
    pcs = {n: principal_components(x) for n, x in layer_inputs.items()}
    offered = sorted(((float(v), n) for n, (_, ratios) in pcs.items() for v in ratios[: 2 * r]), reverse=True)
    won = Counter(n for _, n in offered[: r * len(pcs)])
    return {n: won[n] for n in pcs}, {n: vh for n, (vh, _) in pcs.items()}


def recorded_inputs(model, names, batch: dict, mask: torch.Tensor) -> dict:
    """The inputs of the named modules of ``model`` on ``batch``, at the positions of ``mask``."""
    seen = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, i[0])) for n in names
    ]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    return {n: x[mask] for n, x in seen.items()}


def check_eva(base, model, batch: dict, mask: torch.Tensor, r: int) -> dict:
    """EVA's A against ``eva_by_hand`` on the one batch it read, its rank budget, B = 0, the scaling and the base's
    function at step 0; returns the ranks."""
    layers = lora_layers(model)
    ranks, components = eva_by_hand(recorded_inputs(base, list(layers), batch, mask), r)
    assert {n: layer.r["default"] for n, layer in layers.items()} == ranks
    assert sum(ranks.values()) == r * len(layers)  # the budget: r per matrix, summed
    config = model.peft_config["default"]
    for name, layer in layers.items():
        a = layer.lora_A["default"].weight.detach().double()
        # one batch read over and over: peft's incremental SVD is the batch's own, exact (rows up to sign)
        torch.testing.assert_close(
            (a @ components[name][: ranks[name]].T).diag().abs(), torch.ones(ranks[name]).double()
        )
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        assert layer.scaling["default"] == config.lora_alpha / config.r  # alpha scaled with the rank: alpha/r kept
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=0, atol=1e-6)
    return ranks


def test_eva_a_holds_the_principal_components_of_the_layer_inputs(bert):
    """A classification batch: EVA reads every non-padding position (its labels are class ids, left out)."""
    # one batch of all 64 examples; r=8: 16 components of the 32 features, which peft's randomised SVD gets exactly
    base, model, batches = wrapped(bert, "eva", "lora.r=8", "lora.targets=[q,o]", "train.batch_size=64")
    batch = inputs_of(batches)
    ranks = check_eva(base, model, batch, batch["attention_mask"].bool(), 8)
    assert len(set(ranks.values())) > 1  # redistributed: q's and o's inputs explain their variance differently


def lm_split():
    """16 random token sequences of 12 to 27 tokens whose first 6 are the prompt (labels −100): a causal-LM split."""
    import datasets

    g = torch.Generator().manual_seed(0)
    rows = []
    for length in range(12, 28):
        ids = torch.randint(1000, 3000, (length,), generator=g).tolist()
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * 6 + ids[6:], "length": length}
        )
    return datasets.Dataset.from_list(rows)


def wrapped_lm(folder, init: str, r: int):
    """(the tiny causal LM at ``folder``, a copy wrapped with LoRA of ``init`` at rank r, alpha 2r), in eval mode."""
    cfg, _ = compose(
        [f"model.name_or_path={folder}", "task=sft", f"lora.init={init}", f"lora.r={r}", f"lora.alpha={2 * r}"]
    )
    torch.manual_seed(0)
    base = load_base_model(cfg.model, None).eval()
    return cfg, base, apply_lora(copy.deepcopy(base), cfg.lora, cfg.model).eval()


def test_eva_on_a_causal_lm_reads_the_completion_tokens(tiny_lm):
    """A causal-LM batch keeps its token labels: EVA's SVD reads the positions the loss trains (label ≠ −100)."""
    cfg, base, model = wrapped_lm(tiny_lm, "eva", 8)
    split = lm_split()
    batches = Batches(split, len(split), load_tokenizer(cfg.model.name_or_path).pad_token_id, shuffle=True, seed=0)
    initialize_eva(model, batches)
    batch = next(batches.epoch(0))
    batch.pop("index")
    check_eva(base, model, batch, batch["attention_mask"].bool() & (batch["labels"] != -100), 8)


@pytest.mark.parametrize("init", ["kaiming", "pissa"])
def test_a_causal_lms_baseline_is_the_base_models_whatever_the_init(tiny_lm, init):
    """The reference a causal-LM trial reports is the base model's loss, also under PiSSA, whose adapter disabled
    would leave W_res."""
    cfg, base, model = wrapped_lm(tiny_lm, init, 2)
    split = lm_split()
    batches = Batches(split, 8, load_tokenizer(cfg.model.name_or_path).pad_token_id, shuffle=False)
    tokens = completion_tokens(split)
    expected = compute_metrics(cfg.task.metrics, evaluate(base, batches, torch.device("cpu"), "fp32"), tokens)
    got = base_model_baseline(cfg, model, batches, tokens, torch.device("cpu"), "fp32")
    assert got == pytest.approx(expected, rel=1e-6)


def test_eva_is_deterministic_from_the_seed(bert):
    """The same train.seed gives the same A's (4 batches, in its shuffle's order, read to convergence)."""
    runs = [wrapped(bert, "eva")[1] for _ in range(2)]
    a, b = ({n: m.lora_A["default"].weight for n, m in lora_layers(run).items()} for run in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_a_converted_adapter_reloads_onto_the_original_base(bert, init, tmp_path):
    """PiSSA and OLoRA train on W_res; their adapter, saved converted (rank 2r), reloads onto W with the trained
    head and computes what the trained model computes."""
    from peft import PeftModel

    base, model, batches = wrapped(bert, init)
    save_initial(model, tmp_path / "init-adapter")
    with torch.no_grad():  # "training": every trainable tensor moves, the head's too
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_adapter(model, tmp_path / "adapter", tmp_path / "init-adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == (2 * R, 2 * ALPHA, True)
    torch.manual_seed(1)  # another random head: only the saved one can give the trained model's logits
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter")).eval()
    batch = inputs_of(batches)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


def test_pissa_takes_gpt2s_conv1d(tmp_path):
    """peft transposes GPT-2's in × out weight for PiSSA: W_res + s·B·A = W, the top-r part taken from Wᵀ."""
    cfg, _ = compose([f"model.name_or_path={save_tiny_lm(tmp_path / 'gpt2', 'gpt2')}", "lora.targets=[qkv]"])
    torch.manual_seed(0)
    base = load_base_model(cfg.model, ["a", "b"])
    model = apply_lora(copy.deepcopy(base), replace(cfg.lora, r=R, alpha=ALPHA, init="pissa"), cfg.model)
    for name, layer in lora_layers(model).items():
        w = base.get_submodule(name).weight.double().T  # Conv1D stores in × out
        update = ALPHA / R * layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        torch.testing.assert_close(update, _top_svd(w, R), rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.get_base_layer().weight.double().T + update, w, rtol=0, atol=1e-6)


# (model: tiny family, targets, init, r, the one-line refusal)
REFUSED = [
    (
        "gpt2",
        ["qkv"],
        "olora",
        2,
        "lora.init=olora cannot adapt the Conv1D modules of model 'gpt2' (transformer.h.<0-1>.attn.c_attn): peft's "
        "OLoRA factors their stored weight (in × out) as if it were out × in; give lora.init=pissa, kaiming, "
        "gaussian or eva",
    ),
    (
        "bert",
        ["q", "v"],
        "eva",
        32,
        "lora.init=eva with lora.r holding r=32: EVA computes 64 principal components of each adapted matrix's input "
        "(round(rho·r), rho=2), more than the 32 features of bert.encoder.layer.<0-1>.attention.self.query, "
        "bert.encoder.layer.<0-1>.attention.self.value in model 'bert'; give r ≤ 16",
    ),
]


@pytest.mark.parametrize("family, targets, init, r, message", REFUSED, ids=[c[2] for c in REFUSED])
def test_inits_a_model_cannot_take_are_refused_before_any_work(family, targets, init, r, message, tiny_bert, tmp_path):
    folder = tiny_bert if family == "bert" else save_tiny_lm(tmp_path / family, family)
    cfg, _ = compose([f"model.name_or_path={folder}"])
    base = load_base_model(cfg.model, ["a", "b"])
    with pytest.raises(UserError) as e:
        check_limits(
            base,
            load_tokenizer(cfg.model.name_or_path),
            family_applied(base, cfg.model),
            target_sets=[targets],
            r=r,
            r_key="lora.r",
            max_length=64,
            n_texts=2,
            init=init,
        )
    assert str(e.value) == message


def test_eva_without_enough_tokens_or_convergence_is_one_line(bert, monkeypatch):
    # r=8: 16 components; single examples of at most 12 tokens never hold 16
    with pytest.raises(UserError, match=r"^lora.init=eva with lora.r=8: EVA's SVD needs 16 tokens .* give a larger"):
        wrapped(bert, "eva", "lora.r=8", "train.batch_size=1", "data.max_length=12")
    monkeypatch.setattr(inits, "EVA_MAX_PASSES", 1)  # peft's first pass only hashes the inputs: no SVD yet
    with pytest.raises(UserError, match=r"^lora.init=eva: EVA's SVD .* has not converged \(tau=0.99\) after 1 passes"):
        wrapped(bert, "eva", "train.batch_size=64")


def test_a_screen_with_an_init_nested_trials_cannot_take_is_refused():
    from sweep.driver import check_sweep

    with pytest.raises(UserError) as e:
        check_sweep(compose(["lora.init=pissa", "sweep.screen=true"])[0])
    assert str(e.value) == (
        "sweep.screen=true with lora.init=pissa: the screen's trials are nested, and PiSSA subtracts all r components "
        "from the base weights, so a truncated rank b would not compute W + ΔW_b; give sweep.screen=false, or "
        "lora.init=kaiming or gaussian"
    )


@pytest.mark.parametrize("init", INITS)
def test_a_trials_adapter_reloads_onto_the_original_base_to_its_predictions(tiny, init):
    """A tiny real trial (MiniLM, 64 MRPC examples, one epoch) of each init records it, keeps the trained r in its
    counts, and its adapter reloads onto a freshly loaded base model to exactly its validation predictions."""
    from peft import PeftModel

    cfg, resolved = compose([*tiny, "train.lr=1e-2", "train.threads=1", f"lora.init={init}"])
    run_dir = trial_dir(cfg, resolved)
    m = run_trial(cfg, resolved, run_dir, progress=False)
    assert m.status == "ok" and m.lora_init == init == json.loads((run_dir / "metrics.json").read_text())["lora_init"]
    # MiniLM's q and v are all 384 × 384: EVA's redistributed ranks cost what rank 8 everywhere costs
    assert m.lora_params == 6 * 2 * 8 * (384 + 384)
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    # PiSSA and OLoRA saved converted: rank 2r, and nothing to initialise on loading
    assert (saved["r"], saved["init_lora_weights"]) == {
        "kaiming": (8, True),
        "gaussian": (8, "gaussian"),
        "pissa": (16, True),
        "olora": (16, True),
        "eva": (8, "eva"),
    }[init]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "adapter",
        "config.yaml",
        "metrics.json",
        "val_predictions.npy",
    ]
    torch.manual_seed(123)  # a fresh random head: only the saved one reproduces the trial
    model = PeftModel.from_pretrained(load_base_model(cfg.model, class_names(cfg)), str(run_dir / "adapter"))
    assert np.array_equal(validation_predictions(model, cfg, m.precision), np.load(run_dir / "val_predictions.npy"))
