"""LoRA initialisations (``lora.init``) beyond the mapping to peft's ``init_lora_weights``
(``sweep.modeling.apply_lora``): what a model cannot take, EVA's pass over the training data, and the
saving of adapters whose initialisation changed the base weights.

- ``kaiming`` (peft's default, Microsoft's loralib): A kaiming-uniform (bound 1/sqrt(k) for A of r×k), B = 0.
- ``gaussian`` (LoRA, Hu et al. 2021, §4.1: "random Gaussian initialization for A and zero for B"): peft
  draws A ~ N(0, (1/r)²) (``LoraLayer.reset_lora_parameters``), B = 0.
- ``pissa`` (PiSSA, Meng et al. 2024): W = U·S·Vᵀ; B = U_r·sqrt(S_r/s), A = sqrt(S_r/s)·V_rᵀ, so s·B·A is
  W's top-r singular part, and the base keeps the rest, W_res = W − s·B·A (s the LoRA scaling). Exact SVD
  (``torch.linalg.svd``): peft's ``pissa_niter_<n>`` fast SVD is not offered, our models are small.
- ``olora`` (OLoRA, Büyükakyüz 2024): W = Q·R; B = Q[:, :r], A = R[:r], W_res = W − s·B·A.
- ``eva`` (EVA, Paischer et al. 2024): A = the top principal components (right-singular vectors of the
  centred inputs) of each adapted matrix's inputs over the training batches, B = 0; the rank budget
  (r per matrix, summed) is redistributed between matrices by explained variance, each matrix keeping at
  most round(rho·r) (peft's ``EvaConfig`` defaults: rho = 2, tau = 0.99, alpha scaled with the new rank
  so that alpha/r stays the same; ``initialize_eva``).

kaiming, gaussian and eva compute the base model exactly until the first step (B = 0); pissa and olora
compute it up to float rounding (W_res + s·B·A = W), and their adapter only reproduces the trial on W_res:
``save_adapter`` saves it converted to an ordinary LoRA adapter of rank 2r that applies to the original W
(peft's ``path_initial_model_for_weight_conversion``: ΔW = s·(B·A − B₀·A₀) = s·[B | −B₀]·[A; A₀]).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional
from unittest import mock

import torch
from torch import nn

from sweep.data import Batches
from sweep.errors import UserError
from sweep.modeling import describe_modules, matrix_dims

#: the folder of a trial (``run_dir``) that holds the adapter as initialised while it trains (pissa, olora)
INITIAL_ADAPTER = "init-adapter"
#: the inits that change the base weights (W_res = W − s·B₀·A₀): their adapter is saved converted
CONVERTED_INITS = ("pissa", "olora")
#: each init other than peft's default (kaiming) in a few words, for reports and exports
INIT_WORDS = {
    "gaussian": "A ~ N(0, 1/r²), B = 0: LoRA §4.1",
    "pissa": "B·A starts as W's top-r singular part and the base keeps the rest: PiSSA; adapters saved converted, rank 2r",
    "olora": "B·A starts from W's QR factors and the base keeps the rest: OLoRA; adapters saved converted, rank 2r",
    "eva": "A from the principal components of each matrix's inputs on the training batches, ranks redistributed: EVA",
}
#: EVA's passes over the training batches before its SVD must have converged (peft's loop has no end of its own)
EVA_MAX_PASSES = 10


def eva_rho() -> float:
    """EVA's rho, peft's ``EvaConfig`` default (2.0; ``sweep.modeling.apply_lora`` passes ``EvaConfig()``)."""
    from peft import EvaConfig

    return EvaConfig().rho


def eva_components(r: int) -> int:
    """The principal components EVA computes per adapted matrix for rank ``r``: round(rho·r), the most rank
    one matrix can receive in the redistribution."""
    return round(eva_rho() * r)


def check_init(init: str, modules: Dict[str, nn.Module], r: int, r_key: str, model_name: str) -> None:
    """Refuse an init the adapted ``modules`` (name -> ``nn.Linear`` or ``Conv1D``) cannot take at rank ``r``
    (named ``r_key`` in the message), before any work.

    Raises:
        UserError: ``olora`` on GPT-2's ``Conv1D`` (peft 0.21.2 factors the stored in × out weight as if it
            were out × in, and the first forward pass fails on the shapes; ``pissa`` transposes it and works);
            ``eva`` with round(rho·r) above a matrix's input features (peft's ``IncrementalPCA`` cannot
            compute more components than features).
    """
    if init == "olora":
        conv = sorted(n for n, m in modules.items() if not isinstance(m, nn.Linear))
        if conv:
            raise UserError(
                f"lora.init=olora cannot adapt the Conv1D modules of model '{model_name}' ({describe_modules(conv)}): "
                "peft's OLoRA factors their stored weight (in × out) as if it were out × in; give lora.init=pissa, "
                "kaiming, gaussian or eva"
            )
    if init == "eva":
        need = eva_components(r)
        narrow = {n: matrix_dims(m)[0] for n, m in modules.items() if matrix_dims(m)[0] < need}
        if narrow:
            features = min(narrow.values())
            highest = max(b for b in range(1, features + 1) if eva_components(b) <= features)
            raise UserError(
                f"lora.init=eva with {r_key} holding r={r}: EVA computes {need} principal components of each adapted "
                f"matrix's input (round(rho·r), rho={eva_rho():g}), more than the {features} features of "
                f"{describe_modules(sorted(narrow))} in model '{model_name}'; give r ≤ {highest}"
            )


def _svd_tokens(batch: Dict[str, torch.Tensor]) -> int:
    """The positions of ``batch`` that EVA's SVD reads (peft's ``prepare_model_inputs_fn_language_modeling``):
    those of the attention mask, and of them those whose label is not −100 when the batch has token labels."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    if "labels" in batch:
        mask &= batch["labels"] != -100
    return int(mask.sum())


def eva_batches(batches: Batches, components: int) -> List[Dict[str, torch.Tensor]]:
    """EVA's data: the training batches in the order of epoch 0 (``train.seed``'s shuffle), as the model takes
    them: without ``index``; without ``labels`` for classification (class ids of shape (batch,), which peft's
    token mask would broadcast against the positions), with them for a causal LM (peft's label mask,
    ``EvaConfig(use_label_mask=True)``, the setting its docs prefer: the SVD reads the completion tokens, the
    ones the loss trains). A batch with fewer such tokens than ``components`` is left out, as peft skips it."""
    out = []
    for batch in batches.epoch(0):
        batch.pop("index")
        if not batches.causal_lm:
            batch.pop("labels")
        if _svd_tokens(batch) >= components:
            out.append(batch)
    return out


def initialize_eva(model, batches: Batches) -> None:
    """EVA's initialisation of the peft ``model`` (wrapped with ``init_lora_weights="eva"``), in place, on the
    training ``batches`` (``eva_batches``): peft's ``initialize_lora_eva_weights`` runs the base model (adapter
    disabled, eval mode, no gradients) over them, cycling, until the incremental SVD of every adapted matrix's
    inputs has converged (cosine similarity of successive components ≥ tau), then sets A to the components,
    redistributes the ranks (a matrix may get 0 and lose its adapter) and records them in the adapter's
    ``rank_pattern`` / ``alpha_pattern``. Call it before the optimizer is built: the shapes of A and B change.

    Deterministic from ``train.seed``: the batches' order is its shuffle, the model runs without dropout, and
    peft seeds its randomised SVD itself (``IncrementalPCA(lowrank_seed=42)``, in a forked RNG); the global
    RNG advances by the re-ranked layers' fresh ``nn.Linear`` initialisation only.

    Raises:
        UserError: no training batch holds round(rho·r) tokens for the SVD, or the SVD has not converged
            after ``EVA_MAX_PASSES`` passes over the batches.
    """
    from peft import initialize_lora_eva_weights

    config = model.peft_config["default"]
    components = eva_components(config.r)
    data = eva_batches(batches, components)
    if not data:
        raise UserError(
            f"lora.init=eva with lora.r={config.r}: EVA's SVD needs {components} tokens (round(rho·r)) in a "
            f"training batch, and no batch of train.batch_size={batches.batch_size} has that many; give a larger "
            "train.batch_size or a smaller lora.r"
        )
    limit, calls = EVA_MAX_PASSES * len(data), 0

    def forward(m, inputs):
        nonlocal calls
        calls += 1
        if calls > limit:
            raise UserError(
                f"lora.init=eva: EVA's SVD of the layer inputs has not converged (tau={config.eva_config.tau:g}) "
                f"after {EVA_MAX_PASSES} passes over the {len(data)} training batches; give another lora.init"
            )
        return m(**inputs)

    initialize_lora_eva_weights(model, data, forward_fn=forward, show_progress_bar=False)


def save_initial(model, folder: Path) -> None:
    """Save the peft ``model``'s adapter (and head) as initialised, into ``folder``, before any step, with
    ``init_lora_weights=True`` in its config: peft refuses to convert against an initial adapter that would
    initialise itself again on loading (it would subtract B₀·A₀ from W_res a second time). ``save_adapter``
    converts against it."""
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        model.save_pretrained(str(folder), save_embedding_layers=False)
    finally:
        config.init_lora_weights = init


def save_adapter(model, folder: Path, initial: Optional[Path] = None) -> None:
    """Save the peft ``model``'s adapter and head into ``folder`` (peft's ``save_pretrained``; no embedding
    layer is ever adapted: saying so spares peft a hub lookup of the base model's config).

    ``initial`` (pissa, olora: the folder ``save_initial`` wrote): saved converted, so that it reloads onto
    the original base model (W, not W_res): rank 2r, A' = [A; A₀], B' = [B | −B₀], ``lora_alpha`` doubled
    (the same alpha/r; peft's ``subtract_mutated_init``). peft 0.21.2's conversion keeps the LoRA matrices
    alone and would lose the trained head (``modules_to_save``): it is written back into the file."""
    if initial is None:
        model.save_pretrained(str(folder), save_embedding_layers=False)
        return
    from peft import get_peft_model_state_dict
    from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file, save_file

    # offline while converting: peft's state dict of the initial adapter looks the base model up on the hub to
    # decide on embedding layers (save_embedding_layers="auto", not passed on), of which LoRA here adapts none
    with warnings.catch_warnings(), mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
        # peft warns of a PiSSA/OLoRA adapter beside another one: here the other is the initial one it converts by
        warnings.filterwarnings("ignore", message=r"(PiSSA|OLoRA) changes the base weights", category=UserWarning)
        model.save_pretrained(
            str(folder), save_embedding_layers=False, path_initial_model_for_weight_conversion=str(initial)
        )
    file = Path(folder) / SAFETENSORS_WEIGHTS_NAME
    saved = load_file(str(file))
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    left_out = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in saved}
    if left_out:
        save_file({**saved, **left_out}, str(file), metadata={"format": "pt"})
