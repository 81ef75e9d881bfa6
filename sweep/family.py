"""Model families: the role map, classification head and fused projections of a checkpoint, chosen
from its ``model_type`` (``config.json``) among ``conf/family/<name>.yaml``, so that
``model.name_or_path=<folder or hub id>`` needs no other override."""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict

from omegaconf import OmegaConf

from sweep.config import FamilyConfig, ModelConfig
from sweep.errors import UserError
from sweep.paths import CONF_DIR

FAMILY_DIR = CONF_DIR / "family"


@functools.lru_cache(maxsize=1)
def families() -> Dict[str, FamilyConfig]:
    """Every family of ``conf/family/``, by file stem, checked against ``FamilyConfig``."""
    out = {}
    for path in sorted(FAMILY_DIR.glob("*.yaml")):
        merged = OmegaConf.merge(OmegaConf.structured(FamilyConfig), OmegaConf.load(path))
        out[path.stem] = OmegaConf.to_object(merged)
    return out


def family_of(model_type: str) -> str | None:
    """The family whose ``model_types`` lists ``model_type``; None when none does."""
    return next((name for name, f in families().items() if model_type in f.model_types), None)


def with_family(model_cfg: ModelConfig, model_type: str) -> ModelConfig:
    """``model_cfg`` with ``family``, ``roles``, ``head`` and ``fused`` made concrete: the family is
    ``model.family`` or the one listing ``model_type``; the user's roles and fused roles are laid over
    the family's, and ``model.head`` (when set) replaces the family's head.

    Raises:
        UserError: ``model.family`` names no family, or ``model_type`` belongs to none and
            ``model.roles`` / ``model.head`` do not say what to adapt and train.
    """
    known = families()
    name = model_cfg.family or family_of(model_type)
    if model_cfg.family is not None and model_cfg.family not in known:
        raise UserError(f"model.family={model_cfg.family!r} is invalid: valid values are {', '.join(known)}")
    if name is None:
        if model_cfg.roles and model_cfg.head:
            return model_cfg
        raise UserError(
            f"model '{model_cfg.name}' has model_type '{model_type}', which no family in conf/family/ "
            f"lists ({', '.join(known)}); set model.family=<one of them> if its module names match, "
            "or give model.roles.<role>=<regex> and model.head=[<head modules>]"
        )
    family = known[name]
    return dataclasses.replace(
        model_cfg,
        family=name,
        roles={**family.roles, **model_cfg.roles},
        head=list(model_cfg.head or family.head),
        fused={**family.fused, **model_cfg.fused},
    )
