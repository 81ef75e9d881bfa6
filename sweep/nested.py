"""Nested-rank training: one adapter at the largest rank screens every smaller rank (DyLoRA).

DyLoRA (Valipour et al., EACL 2023, §3) trains a LoRA adapter of rank r_max so that each of its leading
parts is an adapter of its own: every training step draws a rank b and uses only the first b rank
components, ΔW_b = B[:, :b] · A[:b, :], scaled as an adapter of rank b (alpha/b, or alpha/√b under
rsLoRA); after training, each rank b is evaluated by truncation. One trial then gives a whole screened
rank curve for about the cost of one trial plus one validation pass per rank (the paper: "at least 4 to 7
times faster than LoRA" for a rank search). Measured on MRPC against independent trials (docs/validation.md
§6) it is a biased screen, not a measurement: with b drawn from 1…r (``lora.nested_draw=every``, DyLoRA's and
the default) the high ranks come within a point and the low ones fall 3–5 points below; drawn from the
evaluated ranks alone (``ranks``) the high ranks, trained at one step in seven, fall most.

Here the truncation is a forward hook on peft's own LoRA layers (``LoraLayer.lora_A``): the output of
A, shape (..., r_max), is multiplied by a mask whose first b entries are 1, and the layer's
``scaling`` is set to that of rank b. Masking A's output alone is exact: a masked component contributes
nothing to the output, and neither its row of A nor its column of B receives a gradient. The executed
FLOPs stay those of rank r_max (the masked components are computed, then zeroed), and the trial records
them as such. Ranks are drawn uniformly, per step, from a generator seeded by (seed, epoch),
so that a trial resumed at an epoch boundary draws exactly the ranks the interrupted one would have.

A truncated rank saves as an ordinary peft LoRA adapter of rank b (``save_truncated``): peft's own
state dict with A's first b rows and B's first b columns, and the adapter's ``LoraConfig`` with ``r=b``;
``PeftModel.from_pretrained`` reloads it with no trace of the nesting.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

#: mixed into the rank generator's seed so that it never shares a stream with the data order
_RANK_STREAM = 0xD71A
#: a nested trial's cost in ordinary trials: the training of its largest rank plus one validation pass per
#: rank and epoch; MRPC, r=64 over 7 ranks: 1.2 trials of wall time, 1.5 of FLOPs (docs/validation.md §6)
NESTED_TRIAL_COST = 1.3


def trial_equivalents(outcomes) -> float:
    """Trials of ``outcomes`` counted in ordinary trials: a nested one (``Outcome.nested``) counts
    ``NESTED_TRIAL_COST``."""
    return sum(NESTED_TRIAL_COST if o.nested else 1.0 for o in outcomes)


def nested_ranks(r_max: int, ranks: Sequence[int] | None = None) -> List[int]:
    """The ranks a nested trial of rank ``r_max`` draws and evaluates: ``ranks`` sorted (``lora.nested_ranks``),
    or, when None, the powers of two up to ``r_max`` and ``r_max`` itself (the default sweep's ranks).

    Raises:
        ValueError: a rank is not a positive integer at most ``r_max``, or ``r_max`` is not among them.
    """
    if ranks is None:
        out = [2**i for i in range(int(math.log2(r_max)) + 1) if 2**i < r_max] + [r_max]
        return out
    bad = [b for b in ranks if int(b) != b or not 1 <= int(b) <= r_max]
    if bad or r_max not in {int(b) for b in ranks}:
        raise ValueError(
            f"lora.nested_ranks={list(ranks)} is invalid: positive integers up to lora.r={r_max}, "
            f"lora.r among them (e.g. {nested_ranks(r_max)}), or null for the powers of two up to lora.r"
        )
    return sorted({int(b) for b in ranks})


def step_ranks(ranks: Sequence[int], seed: int, epoch: int, steps: int) -> np.ndarray:
    """The rank each of the ``steps`` training steps of ``epoch`` (0-based) trains, drawn uniformly from
    ``ranks`` (DyLoRA §3: b ~ p_B over the rank range), shape (steps,), int64. A pure function of its
    arguments: a resumed epoch draws the same ranks."""
    rng = np.random.default_rng([_RANK_STREAM, int(seed), int(epoch)])
    return rng.choice(np.asarray(ranks, dtype=np.int64), size=steps)


class RankTruncation:
    """Truncates every LoRA layer of a peft model to its first ``b`` rank components (``set``).

    Args:
        model: a peft model whose LoRA layers all have rank ``r_max`` (adapter ``default``).
        rslora: scale rank b by alpha/√b (rsLoRA, Kalajdzievski 2023) instead of alpha/b (LoRA §4.1).

    Raises:
        ValueError: the model has no LoRA layer, or a layer's rank is not ``r_max``.
    """

    def __init__(self, model: torch.nn.Module, r_max: int, rslora: bool, adapter: str = "default"):
        from peft.tuners.lora import LoraLayer

        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]
        ranks = {m.r[adapter] for m in self.layers}
        if ranks != {r_max}:
            raise ValueError(f"expected LoRA layers of rank {r_max} to truncate, found ranks {sorted(ranks)}")
        self.adapter, self.r_max, self.rslora = adapter, r_max, rslora
        device = self.layers[0].lora_A[adapter].weight.device
        self.mask = torch.ones(r_max, device=device)  # shared by every layer's hook, changed in place
        self.rank = r_max
        self._hooks = [
            m.lora_A[adapter].register_forward_hook(lambda _m, _inp, out: out * self.mask.to(out.dtype))
            for m in self.layers
        ]

    def scaling(self, b: int, alpha: float) -> float:
        """The scaling of an adapter of rank ``b``: alpha/b, or alpha/√b under rsLoRA."""
        return alpha / math.sqrt(b) if self.rslora else alpha / b

    def set(self, b: int) -> None:
        """Use the first ``b`` rank components of every layer, scaled as an adapter of rank ``b``."""
        if b != self.rank:
            self.mask.zero_()
            self.mask[:b] = 1.0
            for m in self.layers:
                m.scaling[self.adapter] = self.scaling(b, m.lora_alpha[self.adapter])
            self.rank = b

    def remove(self) -> None:
        """Back to the whole rank ``r_max`` and no hooks."""
        self.set(self.r_max)
        for h in self._hooks:
            h.remove()


def truncated_state(state: Dict[str, torch.Tensor], b: int) -> Dict[str, torch.Tensor]:
    """A peft LoRA state dict cut to rank ``b``: every ``lora_A`` weight (r_max, k) to its first b rows,
    every ``lora_B`` weight (d, r_max) to its first b columns; other tensors (the head) unchanged."""
    out = {}
    for name, t in state.items():
        if ".lora_A." in name:
            t = t[:b, ...]
        elif ".lora_B." in name:
            t = t[:, :b, ...]
        out[name] = t.contiguous()
    return out


def save_truncated(model, b: int, folder: Path, adapter: str = "default") -> None:
    """Save ``model``'s adapter (as its weights are now) cut to rank ``b`` as an ordinary peft LoRA adapter in
    ``folder``: ``adapter_config.json`` (its ``LoraConfig`` with ``r=b``) and ``adapter_model.safetensors``
    (peft's state dict, truncated by ``truncated_state``); reloadable with ``PeftModel.from_pretrained``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    # no embedding layer is ever adapted: saying so spares peft a hub lookup of the base model's config
    state = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    cut = {k: v.detach().cpu() for k, v in truncated_state(state, b).items()}
    save_file(cut, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    dataclasses.replace(model.peft_config[adapter], r=b).save_pretrained(str(folder))
