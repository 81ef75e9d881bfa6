"""The hand-off of a sweep's choice (analysis/export.py, make export) on a real tiny grid sweep: the
numbers of recommendation.json against the study by hand, the adapter reloaded offline by the README's
own recipe, the merged model, and the one-line errors."""

import json
import math
import re
import shutil
import statistics
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch
from conftest import PROJECT, run_main
from scipy.stats import t as student_t

from analysis.export import main
from sweep.errors import UserError

RANKS, SEEDS = (2, 4), (0, 1)


def grid_args(glue_dir, tmp, ranks, seeds, *extra):
    """The overrides of a tiny grid sweep on q,v at ``ranks`` × ``seeds`` into ``tmp``, with ``extra``."""
    return [
        "debug=tiny",
        "train.threads=1",
        # at the default 2e-3 the tiny trials' 4 steps predict one class for every pair (collapsed: no value,
        # tests/test_collapse.py); at 1e-2 they learn something (measured: r=1, 2, 4 × seeds 0, 1)
        "train.lr=1e-2",
        f"data.dir={glue_dir}",
        f"results_dir={tmp}",
        "sweep=grid",
        f"sweep.ranks=[{','.join(map(str, ranks))}]",
        "sweep.target_sets=[[q,v]]",
        f"sweep.seeds=[{','.join(map(str, seeds))}]",
        f"sweep.max_seeds={len(seeds)}",
        *extra,
    ]


def run_grid(args, out) -> list:
    """Run the sweep of ``args`` and write its reports into ``out``: its console lines."""
    from analysis.report import write_reports
    from sweep.cli import compose
    from sweep.driver import run_sweep

    lines: list = []
    run_sweep(*compose(args), progress=False, log=lines.append)
    write_reports(f"sqlite:///{out / 'study.db'}", None, out)
    return lines


@pytest.fixture(scope="module")
def swept(glue_dir, tmp_path_factory):
    """A finished tiny grid sweep (q,v at r=2 and 4, seeds 0 and 1) exported with the merged model: its
    overrides, its folder and its study."""
    from sweep.cli import compose
    from sweep.driver import run_sweep

    tmp = tmp_path_factory.mktemp("export")
    args = grid_args(glue_dir, tmp, RANKS, SEEDS)
    run_sweep(*compose(args), progress=False, log=lambda *_: None)
    out = tmp / "mrpc" / "grid"
    assert main([*args, "export.merge=true"]) == 0
    study = optuna.load_study(study_name="ranksweep-mrpc-grid", storage=f"sqlite:///{out / 'study.db'}")
    return args, out, study


def by_hand(study):
    """The recommended configuration's values by seed, its trial numbers by seed, and the pooled seed s.d.
    (points) of every configuration, from the study's complete trials."""
    values, numbers = {}, {}
    for t in study.get_trials():
        if t.state == optuna.trial.TrialState.COMPLETE:
            cfg = (t.params["r"], t.user_attrs["targets_key"])
            values.setdefault(cfg, {})[t.params["seed"]] = t.value
            numbers[(*cfg, t.params["seed"])] = t.number
    squares = sum((len(v) - 1) * statistics.variance([100 * x for x in v.values()]) for v in values.values())
    dof = sum(len(v) - 1 for v in values.values())
    pick = tuple(study.user_attrs["recommendation"])
    return pick, values[pick], {s: numbers[(*pick, s)] for s in values[pick]}, math.sqrt(squares / dof), dof


def test_recommendation_json_holds_the_studys_numbers(swept):
    _, out, study = swept
    (r, targets), values, numbers, sigma, dof = by_hand(study)
    rec = json.loads((out / "export" / "recommendation.json").read_text())
    best = min(values, key=lambda s: (-values[s], s))  # the best value, the lowest seed on a tie
    mean = statistics.mean(values.values())
    # the interval's s.d. is raised to the noise floor, 0.29 validation examples of 32 (metric units)
    s_used = max(statistics.stdev(values.values()), 0.29 / 32)
    half = student_t.ppf(0.975, len(values) - 1) * s_used / math.sqrt(len(values))
    assert (rec["r"], rec["targets"], rec["trial"]["seed"]) == (r, targets.split(","), best)
    assert rec["trial"]["number"] == numbers[best] and rec["study"]["name"] == "ranksweep-mrpc-grid"
    assert rec["trial"]["folder"] == str(out / "trials" / f"r{r}-q-v-seed{best}")
    assert rec["target_modules"] == sorted(
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")
    )
    assert (rec["lora_alpha"], rec["scaling"], rec["scaling_factor"]) == (16.0, "standard", 16.0 / r)
    assert rec["lora_init"] == "kaiming"
    assert (rec["learning_rate"], rec["epochs"]) == (0.01, 1)  # train.lr as given above
    m = rec["metric"]
    assert (m["name"], m["n_seeds"], m["trial_value"]) == ("accuracy", len(values), values[best])
    assert m["by_seed"] == {str(s): v for s, v in values.items()}
    assert m["mean"] == pytest.approx(mean) and m["sd"] == pytest.approx(statistics.stdev(values.values()))
    assert m["ci95"] == pytest.approx([mean - half, mean + half])
    # σ is the one the comparisons use: the measured pooled s.d., raised to sweep.noise_floor = 0.29
    # validation examples of 32 (0.29 · 100/32 = 0.90625 points) when below it (the floor is named only then)
    floor = 0.29 * 100 / 32
    used = max(sigma, floor)
    assert rec["sigma_measured"] == pytest.approx(sigma / 100)
    assert rec["sigma_floor"] == (pytest.approx(floor / 100) if sigma < floor else None)
    assert rec["sigma"] == pytest.approx(used / 100) and rec["sigma_dof"] == dof
    assert rec["reliability"]["sigma"] == pytest.approx(used)
    assert f"σ = {used:.2f} points" in rec["reliability"]["text"]
    assert rec["base_model"]["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert rec["label_names"] == ["not_equivalent", "equivalent"]  # MRPC's classes, 1 = equivalent
    trial_record = json.loads((out / "trials" / f"r{r}-q-v-seed{best}" / "metrics.json").read_text())
    assert rec["data"]["digest"] == trial_record["data_digest"] and rec["data"]["dir"].endswith("glue")
    exported = json.loads((out / "export" / "adapter" / "config.json").read_text())
    assert exported["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    adapter_config = json.loads((out / "export" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == rec["base_model"]["local_path"]
    assert (rec["merged"]["val_predictions_equal"], rec["merged"]["n_eval"]) == (True, 32)


def test_lora_config_is_the_adapters(swept):
    from peft import LoraConfig

    _, out, _ = swept
    scope: dict = {}
    exec((out / "export" / "lora_config.py").read_text(), scope)
    pasted, saved = scope["config"], LoraConfig.from_pretrained(str(out / "export" / "adapter"))
    for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "fan_in_fan_out", "task_type"):
        assert getattr(pasted, key) == getattr(saved, key), key
    assert set(pasted.modules_to_save) <= set(saved.modules_to_save)


#: MiniLM-L6 (6 layers, hidden 384): the head trained beside the adapter, the pooler (384·384 + 384) and the
#: classifier (384·2 + 2); DoRA's parameters per rank on q,v (12 matrices of 384 × 384: r·(384 + 384) each) and
#: its magnitudes (one per output of each matrix)
HEAD, DORA_PER_RANK, DORA_MAGNITUDES = 384 * 384 + 384 + 384 * 2 + 2, 12 * (384 + 384), 12 * 384


@pytest.fixture(scope="module", params=["method=dora", "lora.init=pissa"])
def variant(request, glue_dir, tmp_path_factory):
    """A finished tiny grid sweep (q,v at r=1 and 2, seed 0) of DoRA or of LoRA initialised by PiSSA, with its
    reports, exported: the override, the sweep's console lines, its folder and its recommendation.json."""
    tmp = tmp_path_factory.mktemp("variant")
    args = grid_args(glue_dir, tmp, (1, 2), (0,), request.param)
    out = tmp / "mrpc" / "grid"
    lines = run_grid(args, out)
    assert main(args) == 0
    return request.param, lines, out, json.loads((out / "export" / "recommendation.json").read_text())


def test_a_variant_exports_the_config_it_trained(variant):
    """lora_config.py is the trial's LoraConfig: DoRA's use_dora; PiSSA's own r and alpha (its saved adapter,
    converted, holds rank 2r and alpha doubled) and its init."""
    from peft import LoraConfig

    override, _, out, rec = variant
    text = (out / "export" / "lora_config.py").read_text()
    scope: dict = {}
    exec(text, scope)
    pasted, saved = scope["config"], LoraConfig.from_pretrained(str(out / "export" / "adapter"))
    dora, r = override == "method=dora", rec["r"]
    assert (rec["method"], rec["lora_init"]) == (("dora", "kaiming") if dora else ("lora", "pissa"))
    assert (pasted.r, pasted.lora_alpha, pasted.use_dora) == (r, 16.0, dora)
    assert pasted.init_lora_weights == (True if dora else "pissa")
    assert pasted.target_modules == saved.target_modules and pasted.task_type == saved.task_type
    if dora:
        assert (saved.r, saved.use_dora) == (r, True) and "converted" not in text
    else:
        assert (saved.r, saved.lora_alpha) == (2 * r, 32.0)
        assert f"adapter_config.json says r={2 * r}, lora_alpha=32" in text


def test_a_variant_names_its_method_and_init(variant):
    """The sweep's trial lines and report.md say DoRA, or the PiSSA init, where a LoRA sweep says neither."""
    override, lines, out, rec = variant
    report = (out / "report.md").read_text()
    if override == "method=dora":
        assert any(line.startswith("trial 0 dora r=1 q,v seed=0: ") for line in lines), lines
        assert report.startswith("# DoRA rank sweep: ")
        dora = DORA_PER_RANK * rec["r"] + DORA_MAGNITUDES
        assert f"{dora + HEAD:,} trainable parameters: DoRA {dora:,} + head {HEAD:,}" in report
        assert "LoRA init" not in report
    else:
        assert any(line.startswith("trial 0 r=1 q,v init=pissa seed=0: ") for line in lines), lines
        assert report.startswith("# LoRA rank sweep: ")
        assert "\n- **LoRA init**: pissa (B·A starts as W's top-r singular part" in report


@pytest.mark.parametrize(
    "overrides, weights, converted",
    [
        ([], True, False),  # kaiming, peft's default
        (["lora.init=gaussian"], "gaussian", False),
        (["lora.init=olora", "lora.r=4", "lora.alpha=8"], "olora", True),
        (["lora.init=eva", "method=dora"], "eva", False),
    ],
)
def test_lora_config_text_names_the_init(overrides, weights, converted):
    """Each ``lora.init`` as peft's ``init_lora_weights``; EVA with its EvaConfig and the call it needs before
    training; a converted adapter's r and alpha (2r, 2·alpha) named in a comment."""
    from peft import EvaConfig

    from analysis.export import lora_config_text
    from sweep.cli import compose

    tcfg, _ = compose(["debug=tiny", *overrides])
    adapter = {"target_modules": ["query", "value"], "task_type": "SEQ_CLS", "fan_in_fan_out": False}
    text = lora_config_text(tcfg, adapter, ["classifier"], {})
    scope: dict = {}
    exec(text, scope)
    config = scope["config"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (tcfg.lora.r, tcfg.lora.alpha, tcfg.lora.dropout)
    assert config.init_lora_weights == weights and config.use_dora == ("method=dora" in overrides)
    assert isinstance(config.eva_config, EvaConfig) == (weights == "eva")
    assert ("initialize_lora_eva_weights(model, dataloader)" in text) == (weights == "eva")
    assert ("adapter_config.json says r=8, lora_alpha=16, " in text) == converted


def readme_recipe() -> str:
    """The Python block of the README's hand-off section, as written."""
    text = (PROJECT / "README.md").read_text()
    section = text[text.index("## Hand-off") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def reference_logits(args, folder, texts):
    """Logits of the trial's own adapter on its base, loaded the project's way (fp32, in this process)."""
    from peft import PeftModel

    from sweep.cli import compose
    from sweep.modeling import load_base_model, load_tokenizer

    cfg, _ = compose(args)
    model = PeftModel.from_pretrained(load_base_model(cfg.model, cfg.task.label_names), str(folder / "adapter"))
    batch = load_tokenizer(cfg.model.name_or_path)(
        *texts, truncation="longest_first", max_length=cfg.data.max_length, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy(), batch


def test_the_readme_recipe_reloads_the_export_offline(swept, glue_dir, tmp_path):
    from sweep.data import load_glue

    args, out, _ = swept
    rec = json.loads((out / "export" / "recommendation.json").read_text())
    folder = out / "trials" / f"r{rec['r']}-q-v-seed{rec['trial']['seed']}"
    val = load_glue("mrpc", str(glue_dir), ["sentence1", "sentence2"], ["not_equivalent", "equivalent"])["validation"]
    texts = [val["sentence1"][:32], val["sentence2"][:32]]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    recipe = readme_recipe().replace("results/mrpc/default/export/adapter", str(out / "export" / "adapter"))
    check = (
        f"\nimport json, numpy\ns1, s2 = json.load(open({str(tmp_path / 'texts.json')!r}))\n"
        "batch = tokenizer(s1, s2, truncation='longest_first', max_length=64, padding=True, return_tensors='pt')\n"
        f"with torch.no_grad():\n    numpy.save({str(tmp_path / 'logits.npy')!r}, model(**batch).logits.numpy())\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", recipe + check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"tensor\(\[[01]\]\)", proc.stdout)  # the recipe's own example pair
    logits = np.load(tmp_path / "logits.npy")
    assert (logits.argmax(-1) == np.load(folder / "val_predictions.npy")).all()
    expected, batch = reference_logits(args, folder, texts)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    # the merged model computes the same function
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(str(out / "export" / "merged")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(merged(**batch).logits.numpy(), expected, atol=1e-4)


def test_a_named_seed(swept):
    args, out, study = swept
    _, values, numbers, _, _ = by_hand(study)
    assert main([*args, "export.seed=1"]) == 0
    rec = json.loads((out / "export" / "recommendation.json").read_text())
    assert (rec["trial"]["seed"], rec["trial"]["number"], rec["trial"]["chosen"]) == (1, numbers[1], "export.seed=1")
    assert rec["metric"]["trial_value"] == values[1] and "merged" not in rec
    assert not (out / "export" / "merged").exists()  # the earlier export is replaced whole


def _copy(swept, tmp_path, **attrs):
    """The sweep copied under ``tmp_path`` (its study's attributes set to ``attrs``): its overrides and folder."""
    args, out, _ = swept
    copy = tmp_path / "mrpc" / "grid"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("export"))
    study = optuna.load_study(study_name="ranksweep-mrpc-grid", storage=f"sqlite:///{copy / 'study.db'}")
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return [a for a in args if not a.startswith("results_dir=")] + [f"results_dir={tmp_path}"], copy


@pytest.mark.parametrize(
    "attrs, extra, message",
    [
        ({}, ["sweep.name=missing"], r"no sweep study at .*missing/study.db; run `make sweep"),
        ({}, ["export.seed=7"], r"export.seed=7 is not a seed of the recommended configuration; valid: 0, 1 "),
        ({"stop_reason": None}, [], r"sweep 'ranksweep-mrpc-grid' has not finished, .*finish it with `make sweep"),
        ({"recommendation": None}, [], r"finished without a recommendation \(grid complete"),
    ],
)
def test_errors_name_the_problem(swept, tmp_path, attrs, extra, message):
    args, _ = _copy(swept, tmp_path, **attrs)
    with pytest.raises(UserError, match=message):
        main([*args, *extra])


def test_a_trial_folder_without_its_adapter(swept, tmp_path):
    args, copy = _copy(swept, tmp_path)
    (r, _), values, _, _, _ = by_hand(swept[2])
    best = min(values, key=lambda s: (-values[s], s))
    shutil.rmtree(copy / "trials" / f"r{r}-q-v-seed{best}" / "adapter")
    ran = run_main(main, *args)
    assert ran.returncode == 2 and ran.stdout == "" and len(ran.stderr.splitlines()) == 1, ran
    assert "has no adapter/adapter_config.json, adapter/adapter_model.safetensors in" in ran.stderr
    assert ran.stderr.rstrip().endswith(f"or export another seed: export.seed={1 - best}")
    assert not (copy / "export").exists()


def test_export_keys_leave_a_sweep_as_it_is():
    """``export.*`` is read by the export alone: it is no part of a study's or a trial's identity."""
    from sweep.cli import compose
    from sweep.resume import fingerprint, trial_identity

    plain, named = compose([])[1], compose(["export.seed=3", "export.merge=true"])[1]
    assert fingerprint(plain) == fingerprint(named) and trial_identity(plain) == trial_identity(named)


def test_lora_config_text_of_adalora_is_its_own_config_class():
    """An AdaLoRA sweep's lora_config.py is an ``AdaLoraConfig`` with the budget schedule its adapter was
    trained with (from its adapter_config.json), not a ``LoraConfig``."""
    from peft import AdaLoraConfig

    from analysis.export import lora_config_text
    from sweep.cli import compose

    tcfg, _ = compose(["debug=tiny", "method=adalora", "lora.r=4"])
    schedule = {"init_r": 6, "target_r": 4, "tinit": 1, "tfinal": 2, "deltaT": 1, "total_step": 12}
    adapter = {"target_modules": ["query", "value"], "task_type": "SEQ_CLS", "fan_in_fan_out": False, **schedule}
    scope: dict = {}
    exec(lora_config_text(tcfg, adapter, ["classifier"], {}), scope)
    config = scope["config"]
    assert isinstance(config, AdaLoraConfig)
    assert {k: getattr(config, k) for k in schedule} == schedule
    assert (config.lora_alpha, sorted(config.target_modules)) == (tcfg.lora.alpha, ["query", "value"])
