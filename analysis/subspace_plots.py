"""Heatmaps of the normalised subspace similarity φ(i, j) between two adapters, one panel per adapted
matrix (LoRA, Hu et al. 2021, Figures 3–4), as matplotlib ``Figure`` objects in the style of
``analysis/plots.py``."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from matplotlib.figure import Figure

from analysis.plots import _figure, _style

#: panels per row: six layers of MiniLM side by side; deeper models wrap onto more rows
MAX_COLUMNS = 6


def _ticks(size: int) -> list:
    return sorted({1, math.ceil(size / 2), size}) if size > 2 else list(range(1, size + 1))


def similarity_heatmaps(grids: Dict[Tuple[int, str], torch.Tensor], title: str, ylabel: str, xlabel: str) -> Figure:
    """One heatmap of φ (r₁×r₂, values in [0, 1], ``analysis.subspace.similarity_grid``) per adapted
    matrix, keyed by (layer, matrix) as ``analysis.adapters.module_label`` gives them: one row of
    panels per matrix (Wq, Wv, …), layers left to right, a shared colour bar. Row i of a panel is the
    first adapter's top-i directions (``ylabel``), column j the second's top-j (``xlabel``). The colour
    scale runs from 0 to the largest φ shown, rounded up to a tenth, so that weak overlaps stay visible.
    Returns the figure (not saved)."""
    matrices = list(dict.fromkeys(m for _, m in sorted(grids, key=lambda k: (k[1], k[0]))))
    layers = sorted({layer for layer, _ in grids})
    columns = min(len(layers), MAX_COLUMNS)
    blocks = math.ceil(len(layers) / columns)  # rows of panels per matrix
    top = math.ceil(10 * max(float(phi.max()) for phi in grids.values()) - 1e-9) / 10
    with _style():
        fig = _figure(0.9 + 1.25 * len(matrices) * blocks)
        axes = fig.subplots(len(matrices) * blocks, columns, squeeze=False)
        image = None
        for m, matrix in enumerate(matrices):
            for li, layer in enumerate(layers):
                ax = axes[m * blocks + li // columns][li % columns]
                ax.grid(False)
                phi = grids.get((layer, matrix))
                if phi is None:
                    ax.set_axis_off()
                    continue
                r1, r2 = phi.shape
                image = ax.imshow(
                    phi.numpy(),
                    vmin=0,
                    vmax=max(top, 0.1),
                    cmap="viridis",
                    aspect="auto",
                    interpolation="nearest",
                    extent=(0.5, r2 + 0.5, r1 + 0.5, 0.5),
                )
                ax.set_xticks(_ticks(r2))
                ax.set_yticks(_ticks(r1))
                ax.set_title(f"{matrix} · layer {layer}" if layer >= 0 else matrix, fontsize=9)
                if li % columns == 0:
                    ax.set_ylabel(ylabel)
                if m == len(matrices) - 1 and li // columns == blocks - 1:
                    ax.set_xlabel(xlabel)
            for li in range(len(layers), blocks * columns):
                axes[m * blocks + li // columns][li % columns].set_axis_off()
        if image is not None:
            fig.colorbar(image, ax=axes, label="φ(i, j)", shrink=0.9, aspect=30, pad=0.02)
        fig.suptitle(title, fontsize=10)
    return fig
