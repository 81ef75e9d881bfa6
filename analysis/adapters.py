"""Read the LoRA adapters a sweep saved and the frozen weights they adapt (I/O only, no maths).

A sweep trial leaves ``trials/<r8-q-v-seed0>/`` with ``metrics.json``, ``config.yaml`` and peft's
``adapter/`` (``adapter_config.json`` and ``adapter_model.safetensors``, whose ``…<module>.lora_A.weight``
is r×k and ``…<module>.lora_B.weight`` is d×r). Trials that did not finish ``ok`` are left out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from sweep.config import Config, targets_key
from sweep.decide import Status
from sweep.record import read_result
from sweep.resume import read_config

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
#: how tables and plots name the attention matrices of the roles q, k, v, o (LoRA §4.2's Wq, Wk, Wv, Wo)
ROLE_NAMES = {"q": "Wq", "k": "Wk", "v": "Wv", "o": "Wo"}


@dataclass(frozen=True)
class TrainedAdapter:
    """The LoRA matrices of one finished trial.

    Attributes:
        trial: the trial's folder name (``r8-q-v-seed0``).
        r: rank; targets: the target set as ``targets_key`` (``q,v``); seed: the training seed.
        scaling: s in ΔW = s·B·A: lora_alpha/r, or lora_alpha/√r with rsLoRA (from adapter_config.json).
        a: module name -> A (r×k); b: module name -> B (d×r); float32 tensors on the CPU.
        config_file: the trial's resolved ``config.yaml`` (model, task), to load its frozen weights.
    """

    trial: str
    r: int
    targets: str
    seed: int
    scaling: float
    a: Dict[str, torch.Tensor]
    b: Dict[str, torch.Tensor]
    config_file: Path


def load_adapter(trial_dir: Path) -> TrainedAdapter:
    """The adapter saved in ``trial_dir`` (a sweep trial folder with ``metrics.json`` and ``adapter/``).

    Raises:
        FileNotFoundError: ``adapter/adapter_model.safetensors`` or a metadata file is missing.
        ValueError: the adapter holds no LoRA matrix, or an A without its B.
    """
    from safetensors.torch import load_file

    record = read_result(trial_dir / "metrics.json")
    saved = read_config(trial_dir / "config.yaml")  # the configuration, should the record lack it
    peft_config = json.loads((trial_dir / "adapter" / "adapter_config.json").read_text())
    a, b = {}, {}
    for key, tensor in load_file(str(trial_dir / "adapter" / "adapter_model.safetensors")).items():
        match = _LORA_KEY.match(key)
        if match:
            (a if match["which"] == "A" else b)[match["module"]] = tensor.float()
    if not a or set(a) != set(b):
        raise ValueError(f"{trial_dir / 'adapter'} holds no complete LoRA pair (A: {len(a)}, B: {len(b)} modules)")
    r = int(peft_config["r"])
    alpha = float(peft_config["lora_alpha"])
    scaling = alpha / (math.sqrt(r) if peft_config.get("use_rslora") else r)
    return TrainedAdapter(
        trial=trial_dir.name,
        r=r,
        targets=targets_key(record.targets or list(saved.lora.targets)),
        seed=int(record.seed if record.seed is not None else saved.train.seed),
        scaling=scaling,
        a=dict(sorted(a.items())),
        b=b,
        config_file=trial_dir / "config.yaml",
    )


def sweep_adapters(sweep_dir: Path) -> List[TrainedAdapter]:
    """Every adapter of a sweep's ``ok`` trials under ``sweep_dir/trials/``, sorted by targets, r, seed;
    trials still running, failed or diverged (no adapter, or ``status`` other than ``ok``) are skipped, and
    so are the screen's nested trials (their adapter was trained for every rank at once, not for its own)."""
    found = []
    for metrics_file in sorted(Path(sweep_dir).glob("trials/*/metrics.json")):
        trial_dir = metrics_file.parent
        record = read_result(metrics_file)
        if record.status != Status.OK or record.nested:
            continue
        if (trial_dir / "adapter" / "adapter_model.safetensors").is_file():
            found.append(load_adapter(trial_dir))
    return sorted(found, key=lambda t: (t.targets, t.r, t.seed))


def trial_config(config_file: Path) -> Config:
    """The typed config saved with a trial (``config.yaml``, of any version: ``sweep.resume.read_config``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), read_config(config_file)))


def frozen_weights(config_file: Path, modules: List[str]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """W (d×k, float32) of each named module of the trial's base model, as loaded for training, and the
    role map of the checkpoint's family (role -> module-name regex, see ``sweep/family.py``)."""
    from sweep.data import class_names
    from sweep.family import with_family
    from sweep.modeling import load_base_model

    cfg = trial_config(config_file)
    base = load_base_model(cfg.model, class_names(cfg))
    roles = with_family(cfg.model, base.config.model_type).roles
    return {name: _weight(base.get_submodule(name)) for name in modules}, roles


def _weight(module: torch.nn.Module) -> torch.Tensor:
    """W as d_out×d_in: ``nn.Linear`` stores it so, GPT-2's ``Conv1D`` stores its transpose (d_in×d_out)."""
    from transformers.pytorch_utils import Conv1D

    weight = module.weight.detach().float()
    return weight.T if isinstance(module, Conv1D) else weight


def module_label(name: str, roles: Dict[str, str]) -> tuple:
    """(layer, matrix) of a module name for tables and plots: ``(3, "Wq")`` for
    ``bert.encoder.layer.3.attention.self.query``; the layer is −1 when the name has no index, the
    matrix is the role of ``model.roles`` that matches (Wq, Wk, Wv, Wo, up, down), else the name's last
    two parts."""
    layer = re.search(r"\.(\d+)\.", name)
    role = next((r for r, pattern in roles.items() if re.fullmatch(pattern, name)), None)
    matrix = ROLE_NAMES.get(role, role) if role else ".".join(name.split(".")[-2:])
    return (int(layer.group(1)) if layer else -1, matrix)
