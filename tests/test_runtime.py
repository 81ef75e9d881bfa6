"""Where a trial runs: device and precision selection, and the sweep lock."""

import os

import pytest
import torch
from conftest import hold_lock

from sweep import runtime
from sweep.cli import compose
from sweep.errors import UserError
from sweep.resume import sweep_lock


@pytest.mark.parametrize(
    "asked, native, expected",
    [
        ("auto", True, "bf16"),  # bf16 autocast only where the hardware computes bf16 natively
        ("auto", False, "fp32"),  # emulated bf16 is slower than fp32 (0.65 GFLOP/s on this CPU): keep fp32
        ("fp32", True, "fp32"),  # an explicit choice is kept either way
        ("bf16", False, "bf16"),
    ],
)
def test_precision_auto_follows_native_bf16(monkeypatch, asked, native, expected):
    cfg, _ = compose([f"train.precision={asked}", "train.device=cpu"])
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    assert runtime.resolve_precision(cfg, torch.device("cpu")) == expected


def test_native_bf16_on_cpu_reads_the_cpu_features(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert runtime.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not runtime.native_bf16(torch.device("cpu"))


def test_cuda_asked_without_cuda_is_one_line(monkeypatch):
    cfg, _ = compose(["train.device=cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        UserError, match=r"^train.device=cuda but torch sees no CUDA device; use train.device=cpu or auto$"
    ):
        runtime.resolve_device(cfg)


def test_second_driver_on_the_same_study_is_refused_and_a_dead_holder_frees_it(tmp_path):
    db = tmp_path / "study.db"
    holder = hold_lock(db)
    try:
        with pytest.raises(UserError, match=rf"^another sweep \(pid {holder.pid}\) is using the study {db}; "):
            with sweep_lock(db):
                pass
    finally:
        holder.kill()
        holder.wait()
    with sweep_lock(db):  # the OS released the lock of the killed holder; the leftover file does not block
        assert (tmp_path / "study.db.lock").read_text() == str(os.getpid())
    assert not db.exists()  # the lock never creates the study
