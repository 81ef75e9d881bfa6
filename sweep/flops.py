"""FLOPs actually executed by a model, counted with ``torch.utils.flop_counter`` (matrix multiplies and
attention; element-wise work is not counted, as is the convention).

Counting every training step under ``FlopCounterMode`` would slow training down, so the count is taken
once per trial on three probe lengths and extended to every real batch: for a transformer the FLOPs of
one example of length L are exactly a + b·L + c·L² (linear layers are linear in L, attention scores
and their application quadratic), and linear in the batch size. Frozen weights get no weight gradient,
so a LoRA backward pass costs about one forward pass, not two: the counter sees what autograd runs,
which is why this is not 6·N·tokens (Kaplan et al. 2020, §2.1, assume every weight is trained).
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _cpu_flash_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: torch's counter knows the CUDA attention kernels but not the CPU flash-attention kernel that
#: ``scaled_dot_product_attention`` runs on CPU; without these it would count attention as 0 FLOPs.
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs executed by ``fn()`` (forward and, if ``fn`` calls it, backward), as an int."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


class FlopModel:
    """FLOPs of one batch from its shape: ``flops(batch, length) = batch·(a + b·L + c·L²)``.

    The coefficients come from exact counts at three probe lengths with batch 1, taken on the real
    model in the mode it runs in (training mode for training: with dropout, attention takes another
    kernel than in evaluation, and the kernels differ in FLOPs). The probe runs under
    ``torch.random.fork_rng`` and its gradients are cleared, so the training run is unchanged. Since
    the polynomial is exact, the total equals what ``FlopCounterMode`` would count on every real
    batch (the tests check this against direct counts).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example: Dict[str, torch.Tensor],
        *,
        train: bool,
        probe_lengths: Sequence[int] = (8, 16, 32),
    ):
        was_training = model.training
        model.train(train)
        counts = []
        cuda = [v.device for v in example.values() if v.is_cuda][:1]
        with torch.random.fork_rng(devices=cuda):
            for length in probe_lengths:
                inputs = {
                    k: v[:1, :1].expand(1, length).contiguous()
                    for k, v in example.items()
                    if k in ("input_ids", "token_type_ids", "attention_mask")
                }
                if train:
                    # a language model's labels are a sequence as long as its input (any ids: FLOPs do not
                    # depend on which are scored); a classifier's, one per example
                    labels = inputs["input_ids"] if example["labels"].dim() == 2 else example["labels"][:1]
                    counts.append(
                        count_flops(lambda inputs=inputs, y=labels: model(**inputs, labels=y).loss.backward())
                    )
                else:
                    with torch.no_grad():
                        counts.append(count_flops(lambda inputs=inputs: model(**inputs)))
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        lengths = np.asarray(probe_lengths, dtype=float)
        # exact solve of the 3×3 Vandermonde system; rounding only removes float noise
        self.coeffs = np.linalg.solve(np.vander(lengths, 3, increasing=True), np.asarray(counts, dtype=float))

    def __call__(self, batch_size: int, length: int) -> int:
        """FLOPs of a batch of ``batch_size`` examples padded to ``length`` tokens."""
        a, b, c = self.coeffs
        return int(round(batch_size * (a + b * length + c * length * length)))
