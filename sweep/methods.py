"""Adaptation methods other than plain LoRA: the wiring of ``method=<name>`` (``conf/method/``) onto the frozen
model, their parameter counts, and the saved result reloaded (schema: ``sweep.config.MethodSettings``).

- peft methods: ``lora`` and ``dora`` (``sweep.modeling.apply_lora``), ``adalora``, ``vera``, ``fourierft``,
  ``ia3``, ``prefix``; saved with peft's ``save_pretrained`` (``adapter/``), reloaded with
  ``PeftModel.from_pretrained`` onto the base model.
- references: ``full`` (every weight), ``head`` (the classification head alone), ``bitfit`` (biases and head,
  Ben Zaken et al. 2022); the whole model saved with transformers' ``save_pretrained`` (``model/``), reloaded
  with ``AutoModelFor….from_pretrained``.

Adapting a ``Conv1D`` model (GPT-2) sets peft's ``fan_in_fan_out`` as for LoRA.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from sweep.config import Config, Method
from sweep.errors import UserError
from sweep.modeling import (
    _in_head,
    apply_lora,
    describe_modules,
    has_lm_head,
    portable_base_id,
    target_module_names,
)

#: the folder a trial saves a peft adapter in, and the one it saves a whole model in (``full``, ``head``, ``bitfit``)
ADAPTER_DIR, MODEL_DIR = "adapter", "model"

#: methods that train parameters of the model itself (no peft): their result is the whole model
WHOLE_MODEL = (Method.full, Method.head, Method.bitfit)


def adalora_ranks(cfg: Config) -> tuple:
    """(initial rank, target average rank) of an AdaLoRA trial: ``method.init_r`` (null: ⌈1.5·r⌉, Zhang et al.
    2023 §3.3's b(0) = 1.5·b(T)) and ``lora.r``."""
    init_r = cfg.method.init_r or math.ceil(1.5 * cfg.lora.r)
    return init_r, cfg.lora.r


def _transposed(model: nn.Module, names: List[str], key: str) -> bool:
    """Whether the modules ``names`` are transformers ``Conv1D`` (weight in × out: peft's ``fan_in_fan_out``).

    Raises:
        UserError: they mix ``Conv1D`` and ``nn.Linear`` (one ``fan_in_fan_out`` for all of them).
    """
    mods = dict(model.named_modules())
    transposed = {n for n in names if not isinstance(mods[n], nn.Linear)}
    if transposed and len(transposed) < len(names):
        raise UserError(
            f"{key} mixes Conv1D modules ({describe_modules(sorted(transposed))}) with nn.Linear ones; adapt one kind per trial"
        )
    return bool(transposed)


def peft_config(model: nn.Module, cfg: Config, model_cfg, total_steps: int):
    """The peft config of ``cfg.method`` for ``model`` (not ``lora``/``dora``: ``apply_lora``).

    Args:
        total_steps: the trial's optimiser steps (AdaLoRA's schedule of its budget is in steps).

    Raises:
        UserError: a target that matches no module (``sweep.modeling.resolve_targets``), or mixed module kinds.
    """
    import peft

    name = cfg.method.name
    task_type = peft.TaskType.CAUSAL_LM if has_lm_head(model) else peft.TaskType.SEQ_CLS
    head = list(model_cfg.head) or None
    if name == Method.prefix:
        return peft.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=cfg.method.prefix_length, modules_to_save=head
        )
    if name == Method.ia3:
        names = target_module_names(model, cfg.method.ia3_targets, model_cfg)
        feedforward = target_module_names(model, ["down"], model_cfg) if "down" in cfg.method.ia3_targets else []
        return peft.IA3Config(
            task_type=task_type,
            target_modules=names,
            feedforward_modules=[n for n in feedforward if n in names],
            modules_to_save=head,
            fan_in_fan_out=_transposed(model, names, "method.ia3_targets"),
        )
    names = target_module_names(model, cfg.lora.targets, model_cfg)
    transposed = _transposed(model, names, "lora.targets")
    if name == Method.adalora:
        init_r, target_r = adalora_ranks(cfg)
        return peft.AdaLoraConfig(
            task_type=task_type,
            init_r=init_r,
            target_r=target_r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=names,
            total_step=total_steps,
            tinit=int(cfg.method.tinit * total_steps),
            tfinal=int(cfg.method.tfinal * total_steps),
            modules_to_save=head,
            fan_in_fan_out=transposed,
        )
    if name == Method.vera:
        return peft.VeraConfig(
            task_type=task_type,
            r=cfg.method.vera_r,
            target_modules=names,
            vera_dropout=cfg.lora.dropout,
            projection_prng_key=cfg.train.seed,
            save_projection=True,  # the shared random A, B saved with the adapter: it reloads without the key
            modules_to_save=head,
            fan_in_fan_out=transposed,
        )
    if name == Method.fourierft:
        mods = dict(model.named_modules())
        smallest = min(mods[n].weight.numel() for n in names)
        if cfg.method.n_frequency > smallest:
            raise UserError(
                f"method.n_frequency={cfg.method.n_frequency} is more spectral coefficients than the smallest matrix "
                f"lora.targets adapts has entries ({smallest:,}); give method.n_frequency ≤ {smallest:,}"
            )
        return peft.FourierFTConfig(
            task_type=task_type,
            n_frequency=cfg.method.n_frequency,
            scaling=cfg.method.fourier_scaling,
            random_loc_seed=cfg.train.seed,
            target_modules=names,
            modules_to_save=head,
            fan_in_fan_out=transposed,
        )
    raise ValueError(f"method={name} is not a peft method with its own config")


def apply_method(model: nn.Module, cfg: Config, model_cfg, total_steps: int) -> nn.Module:
    """``model`` made trainable as ``cfg.method`` says; every other parameter frozen.

    ``lora``/``dora``: ``sweep.modeling.apply_lora`` (DoRA: peft ``use_dora=True``). The other peft methods:
    ``peft_config``. ``full``: every parameter trains; ``head``: the head modules (``model.head``) only;
    ``bitfit``: every bias and the head. ``model_cfg`` has its family applied.

    Raises:
        UserError: the method cannot adapt this model (prefix tuning on a model without past key values,
            the head of a language model), or the targets are bad.
    """
    name = cfg.method.name
    if name in (Method.lora, Method.dora):
        return apply_lora(model, cfg.lora, model_cfg, use_dora=name == Method.dora)
    if name in WHOLE_MODEL:
        if name == Method.head and not model_cfg.head:
            raise UserError(
                f"method=head trains the classification head alone, and model '{model_cfg.name}' (a language "
                "model) has none: give a classification task, or another method"
            )
        for pname, p in model.named_parameters():
            p.requires_grad = (
                name == Method.full
                or _in_head(pname, model_cfg.head)
                or (name == Method.bitfit and pname.endswith(".bias"))
            )
        return model
    from peft import get_peft_model

    if name == Method.prefix and not has_lm_head(model) and not _takes_past_key_values(model):
        raise UserError(
            f"method=prefix on a classification task needs a model whose forward takes past_key_values (peft "
            f"{_version('peft')}'s check), and model '{model_cfg.name}' ({model_cfg.family}, transformers "
            f"{_version('transformers')}) takes none: give a causal-LM task (task=sft) or another method"
        )
    wrapped = get_peft_model(model, peft_config(model, cfg, model_cfg, total_steps))
    wrapped.peft_config["default"].base_model_name_or_path = portable_base_id(model_cfg)
    return wrapped


def _takes_past_key_values(model: nn.Module) -> bool:
    """Whether ``model`` or its backbone (``base_model_prefix``) takes ``past_key_values``, where peft's prefix
    tuning of a classifier puts its prefixes (the check peft makes in the forward pass, made before training;
    transformers 5 models take ``cache`` instead, so every classifier fails it; a causal LM is not checked)."""
    import inspect

    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return any(
        m is not None and "past_key_values" in inspect.signature(m.forward).parameters for m in (model, backbone)
    )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def after_step(model: nn.Module, cfg: Config, steps_per_epoch: int):
    """The call a method needs after every optimiser step, before the gradients are cleared, or None:
    AdaLoRA's ``update_and_allocate(global_step)`` (it prunes the budget from the gradients' importance)."""
    if cfg.method.name != Method.adalora:
        return None

    def update(epoch: int, step: int) -> None:
        model.base_model.update_and_allocate(epoch * steps_per_epoch + step)

    return update


def save_trained(model: nn.Module, base: nn.Module, run_dir: Path, initial: Optional[Path] = None) -> Path:
    """Save a trial's trained model where ``load_trained`` finds it: a peft adapter in ``adapter/``
    (``sweep.inits.save_adapter``: PiSSA's and OLoRA's converted against their ``initial`` state), a whole
    model in ``model/``; the base model's config beside it (``id2label``, ``label2id``). Returns the folder."""
    from sweep.inits import save_adapter

    if hasattr(model, "peft_config"):
        folder = run_dir / ADAPTER_DIR
        save_adapter(model, folder, initial)
    else:
        folder = run_dir / MODEL_DIR
        model.save_pretrained(str(folder))
    base.config.save_pretrained(str(folder))
    return folder


def load_trained(run_dir: Path, cfg: Config, label_names: Optional[List[str]]) -> nn.Module:
    """A trial's saved model, in evaluation mode on the CPU: its adapter on a freshly loaded base model
    (``PeftModel.from_pretrained``), or its saved whole model.

    Raises:
        FileNotFoundError: the trial folder holds neither ``adapter/`` nor ``model/``.
    """
    from sweep.modeling import _from_pretrained, load_base_model

    if (run_dir / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        base = load_base_model(cfg.model, label_names)
        model = PeftModel.from_pretrained(base, str(run_dir / ADAPTER_DIR))
    elif (run_dir / MODEL_DIR).is_dir():
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        loader = AutoModelForCausalLM if label_names is None else AutoModelForSequenceClassification
        model = _from_pretrained(loader, str(run_dir / MODEL_DIR))
    else:
        raise FileNotFoundError(f"{run_dir} holds no saved adapter ({ADAPTER_DIR}/) or model ({MODEL_DIR}/)")
    return model.to(torch.device("cpu")).eval()


def method_targets(cfg: Config) -> List[str]:
    """What ``cfg.method`` adapts, as target roles: ``lora.targets`` (LoRA, DoRA, AdaLoRA, VeRA, FourierFT),
    ``method.ia3_targets`` (IA³), none (prefix tuning, BitFit, head, full: no target matrices)."""
    if cfg.method.name == Method.ia3:
        return list(cfg.method.ia3_targets)
    if cfg.method.ranked or cfg.method.name in (Method.vera, Method.fourierft):
        return list(cfg.lora.targets)
    return []


def describe_method(record) -> str:
    """A trial's configuration in words from its record: ``r=8 targets=q,v`` (LoRA), ``dora r=8 targets=q,v``,
    ``r=8 targets=q,v init=pissa`` (a ``lora.init`` other than kaiming), ``vera targets=q,v``, ``full``."""
    method = getattr(record, "method", None) or Method.lora
    parts = [] if method == Method.lora else [str(method)]
    if record.r is not None:
        parts.append(f"r={record.r}")
    if record.targets:
        parts.append(f"targets={','.join(record.targets)}")
    init = getattr(record, "lora_init", None)
    if init not in (None, "kaiming"):
        parts.append(f"init={init}")
    return " ".join(parts)


def describe_params(record) -> str:
    """Where a trial's trainable parameters are, from its record: ``LoRA 13,824 + head 1,538``, ``dora …``,
    ``head 148,610`` (``method=head``: its method trains nothing outside the head)."""
    method = getattr(record, "method", None) or Method.lora
    parts = [] if method == Method.head else [f"{'LoRA' if method == Method.lora else method} {record.lora_params:,}"]
    if record.head_params is not None:
        parts.append(f"head {record.head_params:,}")
    return " + ".join(parts)
