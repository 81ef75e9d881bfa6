"""The subspace analysis of a sweep's adapters (analysis/subspace_report.py, analysis/adapters.py): hand-built
adapters with known overlaps, then the command on a tiny real sweep."""

import math
import shutil

import pandas as pd
import pytest
import torch

from analysis.adapters import TrainedAdapter, module_label
from analysis.subspace_report import analyse, main, recommendation_note, report_lines
from sweep.errors import UserError

N, D = 64, 16  # input dimension k (the space of A's right-singular vectors); output dimension d
ROLES = {"q": r"(.*\.)?attention\.self\.query", "v": r"(.*\.)?attention\.self\.value"}
MODULES = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]
SCALE = 2.0  # lora_alpha / r


def adapter(r: int, seed: int, rows) -> TrainedAdapter:
    """A with rows (r−i)·e_rows[i] (so row i is the i-th right-singular vector), B = [I_r; 0] (d×r),
    the same on both modules: ΔW = SCALE·diag(r, r−1, …, 1) on the block rows[:r] × rows."""
    a = torch.zeros(r, N)
    for i, index in enumerate(rows):
        a[i, index] = r - i
    b = torch.zeros(D, r)
    b[:r, :r] = torch.eye(r)
    return TrainedAdapter(
        trial=f"r{r}-q-v-seed{seed}",
        r=r,
        targets="q,v",
        seed=seed,
        scaling=SCALE,
        a={m: a for m in MODULES},
        b={m: b for m in MODULES},
        config_file=None,
    )


@pytest.fixture(scope="module")
def result():
    adapters = [
        adapter(4, 0, [0, 1, 2, 3]),
        adapter(4, 1, [0, 1, 10, 11]),  # two seeds sharing e0, e1
        adapter(8, 0, [0, 1, 2, 3, 4, 5, 6, 7]),
    ]  # r=8 holds all of r=4 seed 0
    w = torch.zeros(D, N)
    w[:D, :D] = 0.5 * torch.eye(D)
    return analyse(adapters, {m: w for m in MODULES}, ROLES)


def test_module_labels():
    assert module_label(MODULES[0], ROLES) == (0, "Wq")
    assert module_label("bert.encoder.layer.11.intermediate.dense", ROLES) == (11, "intermediate.dense")
    assert module_label("classifier", ROLES) == (-1, "classifier")


def test_pairs_hold_the_known_overlaps(result):
    p = result.pairs
    assert list(p["comparison"].value_counts().sort_index().items()) == [("ranks", 2), ("seeds", 2)]
    ranks = p[p["comparison"] == "ranks"].iloc[0]
    # r=4 seed 0 spans e0..e3, inside r=8's e0..e7: all 4 shared; 4 of r=8's 8 lie in r=4's span
    assert (ranks["r1"], ranks["r2"], ranks["seed1"], ranks["shared_1in2"], ranks["shared_2in1"]) == (4, 8, 0, 4, 4)
    assert ranks["phi_top"] == pytest.approx(1) and ranks["phi_all"] == pytest.approx(1)
    assert ranks["random_all"] == pytest.approx(8 / N) and ranks["n"] == N
    seeds = p[p["comparison"] == "seeds"].iloc[0]
    # e0, e1 shared, e2, e3 vs e10, e11 orthogonal: ‖U₄ᵀU'₄‖² = 2 → φ(4, 4) = 2/4
    assert (seeds["shared_1in2"], seeds["shared_2in1"]) == (2, 2)
    assert seeds["phi_all"] == pytest.approx(0.5) and seeds["overlap_top"] == pytest.approx(1)
    assert result.grids[("seeds", "q,v", 4, 0, 4, 1)][(0, "Wv")].shape == (4, 4)
    assert result.grids[("ranks", "q,v", 4, 0, 8, 0)][(0, "Wq")].shape == (4, 8)


def test_amplification_and_effective_rank(result):
    amp = result.amplification
    # ΔW = 2·diag(4, 3, 2, 1) on a block where W = 0.5·I: ‖ΔW‖ = 2√30, ‖UᵀWV‖ = 0.5·‖I₄‖ = 1
    r4 = amp[(amp["r"] == 4) & (amp["seed"] == 0)].iloc[0]
    assert r4["delta_norm"] == pytest.approx(2 * math.sqrt(30)) and r4["amplification"] == pytest.approx(
        2 * math.sqrt(30)
    )
    r8 = amp[amp["r"] == 8].iloc[0]
    assert r8["amplification"] == pytest.approx(2 * math.sqrt(sum(i * i for i in range(1, 9))) / (0.5 * math.sqrt(8)))
    s = result.summary.set_index(["r", "matrix"])
    assert s.loc[(4, "all"), "effective_rank"] == 2 and s.loc[(4, "Wq"), "seed_pairs"] == 1
    assert s.loc[(4, "all"), "modules"] == 2 and s.loc[(4, "all"), "n_seeds"] == 2
    assert pd.isna(s.loc[(8, "all"), "effective_rank"])


def test_report_sentence_and_section(result):
    note = recommendation_note(result, (4, "q,v"))
    assert note == (
        "Subspace check (LoRA §7.2): directions the adapters on q,v share across seeds, by rank: r=4: 2.0 of 4. "
        "Beyond about 2 directions the seeds do not agree, so the extra directions of r=4 are noise "
        "(the recommended r=4 among them: a lower rank may do as well)."
    )
    assert recommendation_note(result, (8, "q,k,v,o")) == ""
    lines = report_lines(result)
    assert "| 4 | q,v | 2 | 2.0 of 4 (2–2) | 2.0 | 2.0 | 13.2 | 3.4 |" in lines
    assert (
        "- q,v, r=4 in r=8: 4.0 of 4 directions shared; top direction φ(1, 1) = 1.00, its overlap with all of r=8 1.00 (random 0.12)"
        in lines
    )


@pytest.fixture(scope="module")
def tiny_sweep(glue_dir, tmp_path_factory):
    """A real tiny grid sweep with adapters at two ranks (two trials, no reports yet): its overrides and folder."""
    from sweep.cli import compose
    from sweep.driver import run_sweep

    tmp = tmp_path_factory.mktemp("subspace")
    args = [
        "debug=tiny",
        f"data.dir={glue_dir}",
        f"results_dir={tmp}",
        "sweep=grid",
        "sweep.ranks=[2,4]",
        "sweep.target_sets=[[q,v]]",
        "sweep.seeds=[0]",
    ]
    run_sweep(*compose(args), progress=False, log=lambda *_: None)
    return args, tmp / "mrpc" / "grid"


def test_command_on_a_tiny_sweep(tiny_sweep):
    args, out = tiny_sweep
    assert main(args) == 0
    pairs = pd.read_csv(out / "subspace" / "pairs.csv")
    assert len(pairs) == 12 and set(pairs["matrix"]) == {"Wq", "Wv"} and set(pairs["layer"]) == set(range(6))
    assert pairs["comparison"].eq("ranks").all() and pairs["n"].eq(384).all()
    assert pairs["phi_all"].between(0, 1).all() and pairs["shared_1in2"].between(0, 2).all()
    assert pairs["random_all"].eq(4 / 384).all()
    amp = pd.read_csv(out / "subspace" / "amplification.csv")
    assert len(amp) == 24 and (amp["amplification"] > 0).all() and amp["projection"].le(amp["w_norm"]).all()
    summary = pd.read_csv(out / "subspace" / "summary.csv")
    assert list(summary["matrix"]) == ["Wq", "Wv", "all"] * 2 and summary["effective_rank"].isna().all()
    assert (out / "plots" / "subspace-ranks-r2-r4-q-v-seed0.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_tiny_sweep_has_the_section(tiny_sweep):
    from analysis.__main__ import main as report_main

    args, out = tiny_sweep
    assert report_main(args) == 0
    report = (out / "report.md").read_text()
    assert "## Adapter subspaces: signal or noise? (LoRA §7)" in report
    assert "![φ heatmaps subspace-ranks-r2-r4-q-v-seed0](plots/subspace-ranks-r2-r4-q-v-seed0.png)" in report
    assert "| 2 | q,v | 1 | — | — | — |" in report  # one seed: no effective rank


def test_nothing_to_compare(tiny_sweep, tmp_path):
    args, out = tiny_sweep
    copy = tmp_path / "mrpc" / "grid"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "trials" / "r4-q-v-seed0" / "adapter")
    moved = [a for a in args if not a.startswith("results_dir=")] + [f"results_dir={tmp_path}"]
    with pytest.raises(UserError, match=r"no two adapters to compare in .*trials: the analysis needs two ranks"):
        main(moved)
    with pytest.raises(UserError, match="no sweep study at"):
        main([*moved, "sweep.name=missing"])


def test_trial_folders_of_another_version_analyse_the_same(tiny_sweep, tmp_path):
    """An r=4 trial folder as another version may leave it: metrics.json without targets, seed and status
    (they read from config.yaml, and as the default ok), config.yaml with a key this version no longer has
    and without one it added (lora.scaling: read as its default): the same two adapters, the same pairs."""
    import json

    from omegaconf import OmegaConf

    from analysis.adapters import sweep_adapters, trial_config

    args, out = tiny_sweep
    assert main(args) == 0  # the reference analysis of the folders as written
    copy = tmp_path / "mrpc" / "grid"
    shutil.copytree(out, copy)
    trial = copy / "trials" / "r4-q-v-seed0"
    metrics = json.loads((trial / "metrics.json").read_text())
    (trial / "metrics.json").write_text(
        json.dumps({k: v for k, v in metrics.items() if k not in ("targets", "seed", "status")})
    )
    config = OmegaConf.to_container(OmegaConf.load(trial / "config.yaml"))
    config["train"]["removed_since"] = 1
    del config["lora"]["scaling"]
    (trial / "config.yaml").write_text(OmegaConf.to_yaml(config))
    assert [(a.r, a.targets, a.seed) for a in sweep_adapters(copy)] == [(2, "q,v", 0), (4, "q,v", 0)]
    cfg = trial_config(trial / "config.yaml")
    assert (cfg.lora.r, cfg.lora.scaling, cfg.train.seed) == (4, "standard", 0)
    moved = [a for a in args if not a.startswith("results_dir=")] + [f"results_dir={tmp_path}"]
    assert main(moved) == 0
    assert pd.read_csv(copy / "subspace" / "pairs.csv").equals(pd.read_csv(out / "subspace" / "pairs.csv"))


@pytest.mark.slow  # two analyses of a sweep
def test_files_of_an_earlier_analysis_that_no_longer_hold_are_removed(tiny_sweep, tmp_path):
    """A heatmap of a pair that no longer exists goes at the next analysis; the real ones stay. Once an
    adapter is deleted and no pair is left, the report removes every subspace file (it described adapters
    that are gone)."""
    from analysis.__main__ import main as report_main

    args, out = tiny_sweep
    assert main(args) == 0
    copy = tmp_path / "mrpc" / "grid"
    shutil.copytree(out, copy)
    moved = [a for a in args if not a.startswith("results_dir=")] + [f"results_dir={tmp_path}"]
    gone = copy / "plots" / "subspace-ranks-r2-r8-q-v-seed0.png"
    gone.write_bytes(b"an earlier sweep's pair")
    assert main(moved) == 0
    assert not gone.exists() and (copy / "plots" / "subspace-ranks-r2-r4-q-v-seed0.png").is_file()
    assert sorted(p.name for p in (copy / "subspace").glob("*.csv")) == [
        "amplification.csv",
        "pairs.csv",
        "summary.csv",
    ]

    shutil.rmtree(copy / "trials" / "r4-q-v-seed0" / "adapter")
    assert report_main(moved) == 0
    assert not list((copy / "subspace").glob("*.csv")) and not list((copy / "plots").glob("subspace-*.png"))
    assert "Adapter subspaces" not in (copy / "report.md").read_text()
