"""Bad input: one line on stderr naming the bad value and what is valid, exit 2, no traceback,
existing results untouched."""

import pytest
from conftest import run_main, run_module

from sweep.trial import main as trial_main

CASES = [
    (["lora.rnak=16"], "unknown config key 'lora.rnak' (did you mean 'lora.r'?); valid keys under 'lora': r, alpha"),
    (["lora.r=0"], "lora.r=0 is invalid: it must be a positive integer"),
    (["task=foo"], "unknown task 'foo'; valid: cola, custom, mrpc, rte, sft, sst2, stsb"),
    (["lora.scaling=log"], "lora.scaling='log' is invalid: valid values are standard, rslora"),
    (["lora.targets=[q,zz]"], "lora target 'zz' matches no linear module of model 'minilm'"),
    (["data.dir=/no/such/dir"], "data.dir /no/such/dir does not exist"),
    (
        ["model=roberta-base"],
        "model 'roberta-base' is not in the local Hugging Face cache and the hub cannot be reached",
    ),
    (["model=gpt2"], "model 'gpt2' is not in the local Hugging Face cache and the hub cannot be reached"),
    (["model=smollm2-135m"], "model 'HuggingFaceTB/SmolLM2-135M' is not in the local Hugging Face cache"),
    (
        ["task.problem_type=regression"],
        "task.metrics='accuracy' is invalid for task.problem_type=regression: valid values are pearson, spearman",
    ),
    (
        ["data.dir=null"],
        "GLUE mrpc (nyu-mll/glue) is not in the local Hugging Face cache and the hub cannot be reached",
    ),
    (
        ["lora.r=abc"],
        "invalid value for 'lora.r': Value 'abc' of type 'str' could not be converted to Integer; "
        "lora.r takes an integer",
    ),
    (["sweep.ranks=[4,2]"], "sweep.ranks=[4, 2] is invalid: ranks must be distinct and increasing"),
]


@pytest.mark.parametrize("args, message", CASES)
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, monkeypatch, args, message):
    from huggingface_hub import constants

    keep = tmp_path / "mrpc" / "trials" / "earlier" / "metrics.json"
    keep.parent.mkdir(parents=True)
    keep.write_text('{"status": "ok"}')
    # a hub that refuses connections: offline behaviour wherever the tests run, without the offline
    # flag, so the check that spares users half a minute of retries is what is tested (one line only)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("GLUE_DIR", "")
    proc = run_main(trial_main, *tiny, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ranksweep: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert keep.read_text() == '{"status": "ok"}'


def test_the_command_line_itself_prints_one_line(tiny):
    """The same path as a user's shell: ``python -m sweep.trial`` in its own process."""
    proc = run_module("sweep.trial", *tiny, "lora.r=0", timeout=120)
    assert (proc.returncode, proc.stderr) == (
        2,
        "ranksweep: error: lora.r=0 is invalid: it must be a positive integer\n",
    )


@pytest.mark.parametrize(
    "typed, target, word, make_args, python",
    [
        # a regex's $ (make expands "$ " to nothing and joins the words): every word of ARGS is kept, the
        # regex in the recipe shell's quotes with make's $$, inside the user's shell's quotes
        (
            "model.roles.q=query$ sweep.name=x",
            "report",
            "model.roles.q=query$",
            """''"'"'model.roles.q=query$$'"'"' sweep.name=x'""",
            "analysis task=rte sweep=grid 'model.roles.q=query$' sweep.name=x",
        ),
        # Hydra's ${oc.env:…}
        (
            "results_dir=${oc.env:HOME}/r",
            "sweep",
            "results_dir=${oc.env:HOME}/r",
            """''"'"'results_dir=$${oc.env:HOME}/r'"'"''""",
            "sweep task=rte sweep=grid 'results_dir=${oc.env:HOME}/r'",
        ),
    ],
)
def test_a_dollar_that_make_expands_is_refused_with_what_works(monkeypatch, typed, target, word, make_args, python):
    from analysis.__main__ import main as analysis_main

    monkeypatch.setenv("RANKSWEEP_MAKE_ARGS", typed)
    monkeypatch.setenv("RANKSWEEP_MAKE_TARGET", target)
    ran = run_main(analysis_main, "task=rte", "sweep=grid", "mangled")
    assert ran.returncode == 2
    assert ran.stderr == (
        f"ranksweep: error: ARGS holds {word!r}, whose $ make expands before ranksweep sees it (the override "
        f"would arrive mangled); write $$ for it in make: make {target} TASK=rte SWEEP=grid ARGS={make_args}, "
        f"or run the command without make: .venv/bin/python -m {python}\n"
    )


@pytest.mark.parametrize("typed", ["a=$(HOME) b=$$c", "lora.r=8", ""])
def test_a_dollar_meant_for_make_passes(typed):
    from sweep.cli import check_make_args

    check_make_args(typed, "sweep")  # no error
