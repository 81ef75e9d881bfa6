"""Where a trial runs and what it records about its environment: device, precision, library versions,
peak memory."""

from __future__ import annotations

import platform
import resource
from typing import Dict

import torch

from sweep.config import Config
from sweep.errors import UserError


def resolve_device(cfg: Config) -> torch.device:
    """``train.device`` as a torch device (``auto``: CUDA when present).

    Raises:
        UserError: ``cuda`` asked for and torch sees no CUDA device.
    """
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but torch sees no CUDA device; use train.device=cpu or auto")
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.train.device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix multiplies in hardware (CUDA Ampere+, or a CPU with
    AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def resolve_precision(cfg: Config, device: torch.device) -> str:
    """``train.precision`` made concrete: ``auto`` becomes ``bf16`` where ``native_bf16``, else ``fp32``."""
    if cfg.train.precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return cfg.train.precision


def library_versions() -> Dict[str, str]:
    """Versions of Python and the libraries that shape a result, saved with every trial."""
    import datasets
    import optuna
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "datasets": datasets.__version__,
        "optuna": optuna.__version__,
    }


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement for ``peak_memory_mb``: the CUDA allocator's peak on a GPU;
    on Linux also the kernel's high-water mark of the process's resident set (writing 5 to
    ``/proc/self/clear_refs`` resets ``VmHWM``, see proc(5))."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: peak_memory_mb falls back to the lifetime peak
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB since the last ``reset_peak_memory``: on a GPU the CUDA allocator's peak
    (tensors only); on the CPU the process's peak resident set (``VmHWM`` of ``/proc/self/status``:
    the Python process with its libraries and data, not only this trial's tensors). Where ``VmHWM``
    cannot be reset or read (not Linux) it is the process's lifetime peak (``ru_maxrss``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
