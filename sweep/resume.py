"""Everything that lets re-running the same command continue a sweep where it stopped, without losing
or repeating work. A newcomer's map of resuming:

1. **Is a resume meaningful?** ``fingerprint`` / ``check_fingerprint``: a study refuses a run whose
   settings would make its finished trials incomparable (``RESUMABLE_KEYS`` may change; a key added
   after the study was made reads as its default, ``differing_keys``, so an upgrade never strands a sweep).
2. **One process per SQLite study.** ``sweep_lock``: a second driver on the same database file (from
   any results folder) is refused; the OS frees the lock when its holder dies, so a trial still RUNNING
   under a free lock is an orphan.
3. **Orphans.** ``orphans``: trials whose process died (SQLite) are finished (they know their
   configuration) or adopted by the next trial the plan asks for (they died before storing it). On a
   database server a dead worker's trial is failed by heartbeat and run again: ``sweep/claims.py``.
4. **Retries.** ``crashed_attempts``: a crashed trial (status ``failed``) stops the sweep; the re-run
   retries it and counts the attempt.
5. **Finished work is read back, not retrained.** ``finished_result``: a trial whose ``metrics.json``
   was written before the process died; ``reuse_finished``: the same trial finished by another sweep
   under the same ``results/<task>/`` (compared by ``trial_identity``).
6. **Epoch checkpoints.** A trial interrupted mid-way continues from its last finished epoch (the
   checkpoint functions at the end of this file, used by ``sweep/trial.py``).

The decisions need no resume logic: they are a pure function of the study's finished trials
(``sweep/decide.py``), replayed on every run.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

from omegaconf import OmegaConf

from sweep.config import Config
from sweep.data import data_source
from sweep.decide import Status
from sweep.decision import TrialSpec
from sweep.errors import UserError
from sweep.faults import atomic_write
from sweep.record import TrialResult, read_result, write_result
from sweep.redact import config_yaml

if TYPE_CHECKING:  # annotations only: this module stays light for analysis/, which reads studies
    import numpy as np
    import torch

# --- 1. is a resume meaningful? ---------------------------------------------------------------------

#: settings that do not change what a finished trial means, so a resume may change them
#: (the sweep group decides what to run next; device, threads and eval batch size only change speed;
#: export only reads a finished sweep; compare lists what a comparison trains, not what one trial is)
RESUMABLE_KEYS = (
    "sweep.",
    "export.",
    "compare.",
    "lora.r",
    "lora.targets",
    "train.seed",
    "train.device",
    "train.threads",
    "train.eval_batch_size",
    "data.dir",
    "data.train_file",
    "data.validation_file",
    "results_dir",
)


def _settled(value):
    """A float to 12 significant digits, so that one rate written two ways (``3 × 0.003`` is
    0.009000000000000001, ``9e-3`` is 0.009) is one setting; anything else as it is."""
    return float(f"{value:.12g}") if isinstance(value, float) else value


def fingerprint(resolved) -> Dict[str, str]:
    """Flattened ``key -> repr(value)`` of every setting that gives a finished trial its meaning (model,
    task, LoRA scaling and alpha, training and data settings) in the resolved config ``resolved``; the keys
    of ``RESUMABLE_KEYS`` are left out, floats are compared to 12 significant digits (``_settled``)."""
    flat: Dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            elif not any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
                flat[key] = repr(_settled(v))

    walk(OmegaConf.to_container(resolved, resolve=True), "")
    return flat


#: the fingerprint key of the digest of the data a sweep's trials read (not a config key)
DATA_DIGEST = "data.digest"


def run_fingerprint(cfg: Config, resolved) -> Dict[str, str]:
    """``fingerprint(resolved)`` plus what ``train.precision=auto`` and ``train.device=auto`` resolve to on
    this machine (``train.precision``, ``train.device_type``), so a resume on other hardware cannot mix
    fp32 and bf16 (or CPU and CUDA) trials, and the digest of the data read (``data.digest``,
    ``sweep.data.task_digest``), so a resume on other data (another ``data.dir`` holding other rows) cannot
    mix trials trained on different data; the same files in another folder resume.

    Raises:
        UserError: the configured device or precision is not available here; the data cannot be read.
    """
    from sweep.data import task_digest
    from sweep.runtime import resolve_device, resolve_precision

    device = resolve_device(cfg)
    return {
        **fingerprint(resolved),
        "train.precision": repr(resolve_precision(cfg, device)),
        "train.device_type": repr(device.type),
        DATA_DIGEST: repr(task_digest(cfg)),
    }


def _task_defaults(task: str):
    """The default configuration of ``task`` (``conf/`` composed with ``task=<task>`` alone; the default
    task when ``task`` is no group option), resolved: the values keys newer than a stored record read as."""
    from sweep.cli import compose, group_options

    return compose([f"task={task}"] if task in group_options("task") else [])[1]


def default_fingerprint(task: str) -> Dict[str, str]:
    """``fingerprint`` of the default configuration of ``task`` (``_task_defaults``): the value a key added
    after a study was written reads as in it."""
    return fingerprint(_task_defaults(task))


def read_config(path: Path):
    """The resolved config saved as ``path`` (a trial's or a sweep's ``config.yaml``) as this version reads
    it (``read_config_text``).

    Raises:
        OSError, yaml errors: the file cannot be read or parsed.
    """
    return read_config_text(Path(path).read_text())


def read_config_text(text: str):
    """A resolved config saved as YAML ``text`` (a ``config.yaml``, a checkpoint's ``config``) as this
    version reads it: keys this version no longer has are dropped (nothing reads them), keys newer than
    the text take the default of its task (``_task_defaults``), so a config of any version compares and loads.

    Raises:
        yaml errors: the text is not YAML.
    """
    from dataclasses import is_dataclass

    from sweep.cli import _schema_type

    stored = OmegaConf.to_container(OmegaConf.create(text))
    base = _task_defaults(str((stored.get("task") or {}).get("name")))
    known = {}
    for section, value in stored.items():
        if section not in base:
            continue
        if is_dataclass(_schema_type(section)) and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in base[section]}
        known[section] = value
    return OmegaConf.merge(base, known)


def differing_keys(old: Dict[str, str], new: Dict[str, str], defaults: Dict[str, str]) -> List[str]:
    """The keys, sorted, on which the stored fingerprint ``old`` and this run's ``new`` disagree. A key
    ``old`` lacks (added to the schema after it was written) reads as its default (``defaults``), so a
    study made before a key existed resumes when the run keeps the key's default; a key ``new`` lacks (no
    longer in the schema, nothing reads it) is ignored, and so is a value neither ``old`` nor the defaults
    have (``data.digest`` of a study made before it was recorded: there is nothing to compare it with)."""
    return sorted(k for k in new if (k in old or k in defaults) and old.get(k, defaults.get(k)) != new[k])


def data_keys(cfg: Config) -> str:
    """The keys that say where a config's data comes from, for messages."""
    if cfg.data.train_file:
        return "data.train_file (and data.validation_file)"
    if cfg.data.dataset_name:
        return "data.dataset_name and its split keys"
    return "data.dir (or GLUE_DIR)"


def check_fingerprint(study, cfg: Config, new: Dict[str, str]) -> None:
    """Store this run's fingerprint ``new`` (``run_fingerprint``) on a new study, or check it against the
    stored one (``differing_keys``: keys added since read as their defaults) and store it on success.
    Changing only ``RESUMABLE_KEYS`` (``sweep.*``: more ranks, more seeds, other caps) is allowed.

    Raises:
        UserError: incompatible settings; names the first differing key, its old and new value.
    """
    old = study.user_attrs.get("fingerprint")
    if old is not None and old != new:
        defaults = default_fingerprint(cfg.task.name) if set(new) - set(old) else {}
        diffs = differing_keys(old, new, defaults)
        if diffs and diffs[0] == DATA_DIGEST:
            now, then = (f[DATA_DIGEST].strip("'") for f in (new, old))  # reprs of the digests
            raise UserError(
                f"sweep '{cfg.sweep.name}' for {cfg.task.name} was trained on other data: the train and validation "
                f"rows read now (digest {now}, from {data_source(cfg).describe()}) are not those its finished "
                f"trials read (digest {then}); point {data_keys(cfg)} at the data it was run with to resume, "
                "or start another sweep with sweep.name=<new name>"
            )
        if diffs:
            k = diffs[0]
            before = (
                old[k] if k in old else f"{defaults.get(k, '<unset>')} (the default: the key is newer than the study)"
            )
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            raise UserError(
                f"sweep '{cfg.sweep.name}' for {cfg.task.name} was run with {k}={before}, "
                f"this run has {k}={new[k]}{more}: its finished trials would not be comparable; "
                f"re-run with the original settings to resume, or start another sweep with sweep.name=<new name>"
            )
    if old != new:
        study.set_user_attr("fingerprint", new)


# --- 2. one process per SQLite study ----------------------------------------------------------------


def lock_path(database: Path) -> Path:
    """The lock file of the SQLite study file ``database``: ``<database>.lock`` beside it (``study.db.lock``)."""
    return database.with_name(database.name + ".lock")


@contextmanager
def sweep_lock(database: Path) -> Iterator[None]:
    """Hold ``lock_path(database)`` for the whole run: a second driver on the same SQLite file is
    refused, whichever results folder it runs from (the lock belongs to the study, not to a folder), and
    the OS releases the lock when the holder dies (even by SIGKILL), so a trial still RUNNING in the
    study when the lock is free is known to be orphaned. Taken before the file exists, it also keeps two
    of our sweeps from creating Optuna's tables in one new file together.

    Raises:
        UserError: another process holds the lock.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(database), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"another sweep (pid {holder}) is using the study {database}; wait for it to finish "
                "or stop it, then re-run to resume; a SQLite study serves one process: for several "
                "workers put it on PostgreSQL (sweep.storage=postgresql://…)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# --- 3. orphans -------------------------------------------------------------------------------------


@dataclass
class Orphan:
    """A trial left RUNNING by a process that died, which knows its configuration.

    Attributes:
        trial: the ``optuna.trial.Trial`` to finish (tell) in this process.
        spec: its configuration (rank, target set, seed, stage).
        targets: the target list behind ``spec.targets``.
        reported: epochs whose validation objective the study already holds (intermediate values).
        attempt: the attempt number stored on it.
    """

    trial: object
    spec: TrialSpec
    targets: List[str]
    reported: set
    attempt: int


def orphans(study) -> Tuple[list, List[Orphan]]:
    """SQLite, under ``sweep_lock``: every trial still RUNNING holds no lock any more, its process died.

    Returns:
        (blank trials: died before storing their configuration, to be adopted by the next trials the plan
        asks for, so no empty record is left; ``Orphan`` trials to finish, from their last epoch
        checkpoint), both in trial-number order.
    """
    import optuna
    from optuna.trial import TrialState

    blank, known = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.trial.Trial(study, t._trial_id)
        if "spec" not in t.user_attrs:
            blank.append(trial)
        else:
            known.append(
                Orphan(
                    trial,
                    TrialSpec(**t.user_attrs["spec"]),
                    list(t.user_attrs["targets"]),
                    set(t.intermediate_values),
                    int(t.user_attrs.get("attempt", 1)),
                )
            )
    return blank, known


# --- 4. retries -------------------------------------------------------------------------------------


def crashed_attempts(study, spec: TrialSpec) -> List[str]:
    """The reasons of the earlier attempts at ``spec`` that crashed (status ``failed``), oldest first;
    the next attempt's number is ``len(...) + 1``."""
    from optuna.trial import TrialState

    return [
        t.user_attrs.get("reason") or "?"
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get("spec") == dataclasses.asdict(spec) and t.user_attrs.get("status") == Status.FAILED
    ]


# --- 5. finished work is read back, not retrained --------------------------------------------------


def finished_result(run_dir: Path, tresolved, digest: str) -> Optional[TrialResult]:
    """The record (``metrics.json``) of a trial that finished in ``run_dir`` with the identity of the
    resolved config ``tresolved`` (``same_trial``) on the data of digest ``digest`` (a record made before
    digests were recorded counts: its sweep's fingerprint vouches for its data), its process having died
    before telling the study; else None."""
    config, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
    if metrics.is_file() and config.is_file() and same_trial(config, tresolved):
        result = read_result(metrics)
        if result.data_digest in (None, digest):
            return result
    return None


def trial_identity(resolved) -> Dict[str, str]:
    """What makes two trials the same: every setting that gives a result its meaning (model, task,
    data, training, LoRA; see ``fingerprint``) plus r, target matrices and seed."""
    return {
        **fingerprint(resolved),
        "lora.r": repr(resolved.lora.r),
        "lora.targets": repr(list(resolved.lora.targets)),
        "train.seed": repr(resolved.train.seed),
    }


def same_trial(config_file: Path, tresolved) -> bool:
    """Whether the trial whose saved config is ``config_file`` is the trial of the resolved config
    ``tresolved``: the same ``trial_identity``, the file read by ``read_config`` (a key newer than it at
    its default)."""
    return trial_identity(read_config(config_file)) == trial_identity(tresolved)


def reuse_finished(task_dir: Path, tresolved, run_dir: Path, digest: str) -> Optional[TrialResult]:
    """Read back a finished trial of another sweep under ``task_dir`` (``results/<task>/``) whose resolved
    configuration is the same as ``tresolved`` (``same_trial``) and that read the same data (its record's
    ``data_digest`` is ``digest``; a record without one is not reused): its folder is copied to ``run_dir``
    and its ``metrics.json`` gains ``reused_from`` (the source folder). None when there is none."""
    for source in sorted(task_dir.glob(f"*/trials/{run_dir.name}")):
        if source == run_dir or not (source / "metrics.json").is_file() or not (source / "config.yaml").is_file():
            continue
        if not same_trial(source / "config.yaml", tresolved):
            continue
        found = read_result(source / "metrics.json")
        if found.data_digest != digest:
            continue
        m = dataclasses.replace(found, reused_from=str(source))
        shutil.copytree(source, run_dir, dirs_exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml(tresolved))
        write_result(run_dir / "metrics.json", m)
        return m
    return None


# --- 6. epoch checkpoints of one trial (sweep/trial.py) ----------------------------------------------

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
    status: Status = Status.OK
    #: why the trial stopped early (``diverged``), else None
    reason: Optional[str] = None
    #: nested-rank training (``lora.nested``): each rank below the trial's own -> its history, best epoch,
    #: best state and predictions as truncated to that rank (the trial's own rank is this object's fields)
    ranks: Dict[int, "Progress"] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The fields as a plain dict (shallow: the tensors and arrays are shared), as checkpoints store it;
        ``ranks`` only when a nested trial filled it, so an ordinary trial's checkpoint keeps the layout every
        earlier version reads."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ranks" or self.ranks}

    @classmethod
    def from_dict(cls, state: dict) -> "Progress":
        """The inverse of ``to_dict``.

        Raises:
            TypeError: ``state`` has a key that is no field (a checkpoint of another layout).
        """
        return cls(**state)


def save_checkpoint(
    path: Path, model, optimizer, scheduler, progress: Progress, config_text: str, device: torch.device
) -> None:
    """Write everything needed to continue after this epoch exactly as if never stopped.

    The file is a ``torch.save`` dict: ``config`` (the resolved config's YAML, to recognise the trial),
    ``trainable`` (adapter and head tensors), ``optimizer`` and ``scheduler`` state dicts, ``rng`` (the
    CPU generator), ``cuda_rng`` (None off CUDA) and ``state`` (``progress.to_dict()``). It is written to a
    temporary file and renamed, so a kill mid-write leaves the previous checkpoint intact.
    """
    import torch

    from sweep.modeling import trainable_state

    ckpt = {
        "config": config_text,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "state": progress.to_dict(),
    }
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(
    path: Path, model, optimizer, scheduler, config_text: str, device: torch.device
) -> Optional[Progress]:
    """Restore a trial from the checkpoint at ``path`` if there is one written for this very config.

    On a match the trainable tensors of ``model``, ``optimizer``, ``scheduler`` and the RNG (CPU, and CUDA
    when ``device`` is CUDA and the checkpoint has its state) are restored in place, and the trial's
    progress is returned. A missing file, or one written for another trial (its config's ``trial_identity``
    differs from ``config_text``'s: a key added since, or a resumable one such as ``train.threads``, does not),
    returns None and touches nothing: the trial starts from epoch 0.

    Raises:
        whatever ``torch.load`` raises on an unreadable file (it is written atomically, so only a damaged
        disk leaves one).
    """
    if not path.exists():
        return None
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    stored = ckpt.get("config")
    if stored != config_text and (
        stored is None or trial_identity(read_config_text(stored)) != trial_identity(OmegaConf.create(config_text))
    ):
        return None  # another trial's (a setting that changes what the trial means differs)
    model.load_state_dict(ckpt["trainable"], strict=False)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"])
    if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    return Progress.from_dict(ckpt["state"])
