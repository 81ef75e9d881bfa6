"""Everything that lets re-running the same command continue where an interrupted one stopped (Ctrl-C, a
killed process, a power cut), so that the result equals an uninterrupted run's.

- Epoch checkpoints of one trial: after every finished epoch but the last, ``run_trial`` writes
  ``<run_dir>/checkpoint.pt`` (adapter and head, optimiser, scheduler, RNG and the trial's ``Progress``);
  the same command finds it and continues with the next epoch. The file is removed once the trial ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from sweep.modeling import trainable_state

# --- epoch checkpoints of one trial (sweep/trial.py) ---

#: file name of a trial's epoch checkpoint inside its run directory
CHECKPOINT = "checkpoint.pt"


@dataclass
class Progress:
    """What a trial has done so far: the totals ``metrics.json`` reports and the best epoch.

    The field names are the keys of the ``state`` dict that checkpoints hold (``to_dict``/``from_dict``),
    so checkpoints written before this class existed resume unchanged.
    """

    #: epochs finished (trained and evaluated); the next epoch to train has this 0-based index
    epoch: int = 0
    #: one record per finished epoch: ``epoch`` (1-based), ``train_loss`` (mean over its steps), GLUE metrics
    history: List[dict] = field(default_factory=list)
    #: executed training FLOPs (forward + backward, every batch at its padded shape; ``sweep/flops.py``)
    train_flops: int = 0
    #: executed evaluation FLOPs (one validation pass per finished epoch)
    eval_flops: int = 0
    #: wall-clock seconds spent training (epochs of earlier, interrupted runs included)
    train_seconds: float = 0.0
    #: wall-clock seconds spent evaluating
    eval_seconds: float = 0.0
    #: the record of ``history`` with the highest objective so far (None before the first evaluation)
    best: Optional[dict] = None
    #: trainable tensors (adapter and head) at the best epoch, keyed by parameter name
    best_state: Optional[Dict[str, torch.Tensor]] = None
    #: validation predictions at the best epoch, shape (n_eval,): class ids, or scores for regression
    best_preds: Optional[np.ndarray] = None
    #: non-padding training tokens seen (attention mask sum), over all epochs
    train_tokens: int = 0
    #: training tokens including padding (batch × padded length), over all epochs
    padded_tokens: int = 0
    #: ``ok``, or ``diverged`` once the training loss became NaN/inf
    status: str = "ok"
    #: why the trial stopped early (``diverged``), else None
    reason: Optional[str] = None

    def to_dict(self) -> dict:
        """The fields as a plain dict (shallow: the tensors and arrays are shared), as checkpoints store it."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict) -> "Progress":
        """The inverse of ``to_dict``.

        Raises:
            TypeError: ``state`` has a key that is no field (a checkpoint of another layout).
        """
        return cls(**state)


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: Progress, config_text: str,
                    device: torch.device) -> None:
    """Write everything needed to continue after this epoch exactly as if never stopped.

    The file is a ``torch.save`` dict: ``config`` (the resolved config's YAML, to recognise the trial),
    ``trainable`` (adapter and head tensors), ``optimizer`` and ``scheduler`` state dicts, ``rng`` (the
    CPU generator), ``cuda_rng`` (None off CUDA) and ``state`` (``progress.to_dict()``). It is written to a
    temporary file and renamed, so a kill mid-write leaves the previous checkpoint intact.
    """
    ckpt = {"config": config_text, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "state": progress.to_dict()}
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, optimizer, scheduler, config_text: str,
                    device: torch.device) -> Optional[Progress]:
    """Restore a trial from the checkpoint at ``path`` if there is one written for this very config.

    On a match the trainable tensors of ``model``, ``optimizer``, ``scheduler`` and the RNG (CPU, and CUDA
    when ``device`` is CUDA and the checkpoint has its state) are restored in place, and the trial's
    progress is returned. A missing file, or one written for another config (``config_text`` differs),
    returns None and touches nothing: the trial starts from epoch 0.

    Raises:
        whatever ``torch.load`` raises on an unreadable file (it is written atomically, so only a damaged
        disk leaves one).
    """
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("config") != config_text:
        return None
    model.load_state_dict(ckpt["trainable"], strict=False)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    return Progress.from_dict(ckpt["state"])
