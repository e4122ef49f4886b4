"""The sweep folder STORAGE/NAME: every file name in it, sweep.json and the Parquet tables, read and written here only.

    sweep.json        the SweepRecord: the spec, the MLflow parent run, the rounds and stages, the outcome
    trials.parquet    one row per trial (tuner.results.trial_rows), the config keys as columns
    epochs.parquet    one row per (trial, validated epoch)
    reseeds.parquet   --reseed's re-trained copies (trials.parquet's columns)
    final.parquet     each model family's pick, tested once (tuner.final)
    trial_*/ more-<k>/ reseed*/   Ray Tune's experiments: the first round, each --add-trials round, --reseed

Paths inside the folder are stored relative to it (checkpoints in the tables), and sweep.json does not store
where the folder is, so a copied or moved sweep folder works where it lands. Every writer writes aside and
renames: a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.classify import EPOCH_METRICS
from trainables.config import TrialConfig
from trainables.errors import UserError, error_line
from tuner.spec import SweepSpec

RECORD_FILE = "sweep.json"
LOCK_FILE = ".lock"  # held (flock) by the one driver at work on the sweep; says who, in JSON
DRIVER_LOG = "driver.log"  # Ray's own messages in the driver (kept off the terminal)
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
RESEEDS_FILE = "reseeds.parquet"
FINAL_FILE = "final.parquet"
FRONT_FILE = "front.parquet"  # a multi-objective sweep's Pareto front, each member tested once
COSTS_FILE = "costs.json"  # a multi-objective sweep's own copy of its footprints' measured costs
REPORT_DIR = "report"
EXPORT_DIR = "export"
ROUND_DIR = "more-{}"  # the k-th --add-trials round's Tune experiment
RESEED_DIR = "reseed"  # --reseed's experiment; in a grown sweep, reseed-<k> for the k-th round

# trials.parquet: these columns, then one per TrialConfig key
TRIAL_COLUMNS = {"trial_id": pa.string(), "status": pa.string(), "epochs": pa.int64(),
                 "best_val_top1": pa.float64(), "last_val_top1": pa.float64(), "last_val_loss": pa.float64(),
                 "images_per_s": pa.float64(), "wall_s": pa.float64(), "node_id": pa.string(),
                 "checkpoint": pa.string(), "error": pa.string()}
# epochs.parquet: the loop's metrics (trainables.classify.EPOCH_METRICS) and Ray's clock
EPOCH_COLUMNS = ("epoch", *EPOCH_METRICS, "time_total_s")
FINAL_SCHEMA = pa.schema([
    ("family", pa.string()), ("trial_id", pa.string()), ("searched_trial_id", pa.string()), ("model", pa.string()),
    ("checkpoint", pa.string()), ("val_top1", pa.float64()), ("test_top1", pa.float64()),
    ("test_top5", pa.float64()), ("test_loss", pa.float64()), ("test_images", pa.int64()),
    ("per_class_top1", pa.list_(pa.float64())), ("classes", pa.list_(pa.string())), ("confusion_png", pa.string()),
    ("seeds", pa.int64()), ("val_top1_mean", pa.float64()), ("val_top1_std", pa.float64()),
    ("test_top1_mean", pa.float64()), ("test_top1_std", pa.float64())])


_HELD: dict[str, Any] = {}  # sweep folders this process has locked -> their open lock files
# flock's answers on a file system that has no flock (Lustre noflock, some FUSE/NFS): not "held by another"
NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_WARNED_UNLOCKED: set[str] = set()  # file systems said to be unlockable already (one line per process)


def confusion_file(family: str) -> str:
    """The confusion-matrix PNG of a model family (a timm/<name> family stays one file name)."""
    return f"confusion-{slug(family)}.png"


def slug(text: str) -> str:
    """Text as one safe file or folder name: runs of anything but letters, digits, '_', '.', '-' become '-'."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


class SweepState(str, enum.Enum):
    """Where a sweep stands, in sweep.json."""

    RUNNING = "running"  # a driver is at work on it, or was killed (SIGKILL, a crash): --resume continues it
    INTERRUPTED = "interrupted"  # stopped on purpose (Ctrl-C, SIGTERM) or on an error: --resume continues it
    COMPLETE = "complete"  # every trial ran (or a budget or target ended it), the winner tested and registered

    def __str__(self) -> str:
        return self.value


@dataclass
class SweepRecord:
    """sweep.json: what --resume, --add-trials, stage 2, the report, export and sync read back."""

    spec: SweepSpec
    uid: str = field(default_factory=lambda: __import__("uuid").uuid4().hex)  # tags the parent run: found again
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    state: SweepState = SweepState.RUNNING
    stopped_by: str | None = None  # what interrupted the sweep last (a signal, an error), or ended it early
    elapsed_s: float = 0.0  # seconds the sweep's own experiment has run, over every driver run (for --time-budget)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # --add-trials: {"dir": "more-1", "num_samples": N,
    #                                                              "elapsed_s": seconds run}
    winner: str | None = None  # the overall winner's trial_id, once tested
    model_uri: str | None = None  # its registered model
    test: dict[str, Any] | None = None  # its test figures (tuner.final.TestResult's fields)
    stage2: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> {"name", "from_trial"}
    tags: dict[str, str] = field(default_factory=dict)  # extra tags of the parent run (e.g. stage1.*)

    @property
    def completed(self) -> bool:
        return self.state == SweepState.COMPLETE

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["spec"] = self.spec.to_json()
        out["state"] = SweepState(self.state).value
        out["completed"] = self.completed  # for readers of sweep.json that predate `state`
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], spec: SweepSpec) -> "SweepRecord":
        known = {f.name for f in dataclasses.fields(cls)} - {"spec"}
        values = {k: v for k, v in data.items() if k in known}
        state = data.get("state") or (SweepState.COMPLETE if data.get("completed") else SweepState.RUNNING)
        return cls(spec=spec, **{**values, "state": SweepState(state)})


class SweepFolder:
    """STORAGE/NAME. Writes tables and the record; `load()` reads it back as one `Sweep`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def has_record(self) -> bool:
        return self.file(RECORD_FILE).is_file()

    def lock(self) -> None:
        """Own this sweep folder for as long as this process lives: a second driver on it (the same --name twice,
        a double-submitted job, two --resume) is one UserError naming the first. The operating system drops the
        lock with its holder, so the lock of a killed driver is taken over at once. On a file system without
        flock (Lustre noflock, some FUSE/NFS mounts) the sweep goes on unlocked, after one dim line saying so."""
        import fcntl

        key = str(self.path.resolve())
        if key in _HELD:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.file(LOCK_FILE), "a+")
        try:
            _flock_soon(handle, fcntl.LOCK_EX)
        except BlockingIOError:  # EWOULDBLOCK/EAGAIN: held, by another driver
            handle.close()
            raise self._refusal() from None
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                handle.close()
                raise UserError(f"cannot lock sweep folder {self.path} ({exc.strerror or exc})") from None
            _warn_unlocked(self.path)
        _write_holder(handle)
        _HELD[key] = handle  # kept open: closing it would drop the lock

    def unlock(self) -> None:
        """Let go of this folder's lock (taken by `lock`), e.g. before handing the folder to another process."""
        handle = _HELD.pop(str(self.path.resolve()), None)
        if handle is not None:
            handle.close()  # closing the only descriptor drops the flock

    def check_unlocked(self) -> None:
        """A UserError naming the driver at work on this folder, if one is (this process counts as none). Probes
        the lock without waiting and lets go of it at once; writes nothing, so it can run before any check."""
        import fcntl

        if str(self.path.resolve()) in _HELD:
            return
        try:
            handle = open(self.file(LOCK_FILE), "r")
        except OSError:  # no lock file (no driver ever ran here) or unreadable: lock() itself decides later
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a read-only file may take it (NFS)
            except BlockingIOError:
                raise self._refusal() from None
            except OSError:  # no flock on this file system: nothing to learn (lock() warns)
                return
            fcntl.flock(handle, fcntl.LOCK_UN)

    def holder(self) -> dict[str, Any]:
        """Who took this folder's lock last (host, pid, since), as its driver wrote it; {} when unknown."""
        try:
            holder = json.loads(self.file(LOCK_FILE).read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _refusal(self) -> UserError:
        holder = self.holder()
        if not holder:  # the holder had just taken the lock and not yet said who it is
            time.sleep(0.2)
            holder = self.holder()
        pid = holder.get("pid")
        return UserError(f"sweep '{self.path.name}' is being run by another driver (pid {pid or '?'} on "
                         f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it to end, or stop "
                         f"it (Ctrl-C, or kill -INT {pid or 'PID'}) and --resume")

    # --- sweep.json ---------------------------------------------------------------------------------------------

    def write_record(self, record: SweepRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_aside(self.file(RECORD_FILE), lambda tmp: tmp.write_text(json.dumps(record.to_json(), indent=2)))

    def read_record(self) -> SweepRecord:
        """sweep.json as a SweepRecord; a missing or unreadable one is a UserError saying what to check."""
        path = self.file(RECORD_FILE)
        if not self.path.exists():
            raise UserError(f"no sweep at {self.path}; check --storage and --name (STORAGE/NAME of a sweep made by "
                            f"python -m tuner.run)")
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder; pass a sweep folder STORAGE/NAME made by python -m tuner.run")
        if not path.is_file():
            raise UserError(f"{self.path} is not a sweep folder (no {RECORD_FILE}); check --storage and --name")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            spec = SweepSpec.from_json({**data.pop("spec"), "storage": str(self.path.parent.resolve()),
                                        "name": self.path.name})
            return SweepRecord.from_json(data, spec)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{path} is unreadable ({error_line(exc, 120)}); it may be truncated") from None

    # --- the tables ---------------------------------------------------------------------------------------------

    def write_trials(self, rows: list[dict[str, Any]], name: str = TRIALS_FILE) -> Path:
        schema = trials_schema()
        # a multi-objective sweep's columns (tuner.front): each cost, feasible, pareto
        extra = sorted({k for row in rows for k in row if k.startswith("cost_") or k in ("feasible", "pareto")})
        for key in extra:
            schema = schema.append(pa.field(key, pa.float64() if key.startswith("cost_") else pa.bool_()))
        rows = [{**row, "checkpoint": self._relative(row.get("checkpoint"))} for row in rows]
        table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
        return self._write_table(table, name)

    def read_trials(self, name: str = TRIALS_FILE) -> list[dict[str, Any]]:
        """Rows of trials.parquet (or reseeds.parquet), checkpoints as absolute paths where the folder is now."""
        rows = self._read_table(name).to_pylist()
        for row in rows:
            row["checkpoint"] = self._absolute(row.get("checkpoint"))
        return rows

    def write_epochs(self, rows: list[dict[str, Any]]) -> Path:
        schema = pa.schema([pa.field("trial_id", pa.string()), pa.field("epoch", pa.int64())]
                           + [pa.field(c, pa.float64()) for c in EPOCH_COLUMNS[1:]])
        rows = [{c: row.get(c) for c in schema.names} for row in rows]
        return self._write_table(pa.Table.from_pylist(rows, schema=schema), EPOCHS_FILE)

    def read_epochs(self) -> list[dict[str, Any]]:
        return self._read_table(EPOCHS_FILE).to_pylist() if self.file(EPOCHS_FILE).is_file() else []

    def write_final(self, rows: list[dict[str, Any]]) -> Path:
        rows = [{**row, "checkpoint": self._relative(row.get("checkpoint"))} for row in rows]
        return self._write_table(pa.Table.from_pylist(rows, schema=FINAL_SCHEMA), FINAL_FILE)

    def read_final(self) -> list[dict[str, Any]]:
        if not self.file(FINAL_FILE).is_file():
            return []
        rows = self._read_table(FINAL_FILE).to_pylist()
        for row in rows:
            row["checkpoint"] = self._absolute(row.get("checkpoint"))
        return rows

    def _write_table(self, table: pa.Table, name: str) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return write_table(self.file(name), table)

    def _read_table(self, name: str) -> pa.Table:
        path = self.file(name)
        try:
            return pq.read_table(path)
        except FileNotFoundError:
            raise UserError(f"{self.path} has no {name}") from None
        except Exception as exc:  # noqa: BLE001 - any Arrow/IO error: the file is not what a sweep writes
            raise UserError(f"{path} is unreadable ({type(exc).__name__}); it may be truncated") from None

    def _relative(self, path: str | None) -> str | None:
        if not path:
            return path
        try:
            return Path(path).resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:  # outside the folder (a checkpoint of another sweep): kept as given
            return path

    def _absolute(self, path: str | None) -> str | None:
        if not path or os.path.isabs(path):
            return path
        return str(self.path.resolve() / path)

    # --- one view of the whole folder ---------------------------------------------------------------------------

    def load(self, *, need_trials: bool = True) -> "Sweep":
        """The folder as one Sweep; a folder without trials.parquet is a UserError when `need_trials`."""
        record = self.read_record()
        if need_trials and not self.file(TRIALS_FILE).is_file():
            raise UserError(f"{self.path} has no {TRIALS_FILE}: the sweep has not finished; continue it with "
                            f"python -m tuner.run --space {record.spec.space} --resume --name {self.path.name} "
                            f"--storage {self.path.parent}")
        trials = self.read_trials() if self.file(TRIALS_FILE).is_file() else []
        if trials and not {"trial_id", "best_val_top1"} <= set(trials[0]):
            raise UserError(f"{self.file(TRIALS_FILE)} is not a sweep's trials table (no trial_id/best_val_top1)")
        reseeds = self.read_trials(RESEEDS_FILE) if self.file(RESEEDS_FILE).is_file() else []
        epochs = self.read_epochs() if self.file(EPOCHS_FILE).is_file() else None
        final = self.read_final() if self.file(FINAL_FILE).is_file() else None
        return Sweep(self, record, trials, epochs, final, reseeds)


@dataclass
class Sweep:
    """What a sweep folder holds, read once: used by the summary, the report, export, sync and resume."""

    folder: SweepFolder
    record: SweepRecord
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]] | None = None  # None: a sweep made before epochs.parquet existed
    final: list[dict[str, Any]] | None = None  # None: no family tested yet
    reseeds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def spec(self) -> SweepSpec:
        return self.record.spec

    @property
    def name(self) -> str:
        return self.path.name

    def trial(self, trial_id: str) -> dict[str, Any] | None:
        return next((r for r in self.trials + self.reseeds if r["trial_id"] == trial_id), None)

    def stage2(self) -> dict[str, "Sweep"]:
        """A two-stage sweep's stage-2 sweeps that exist, by family (from this stage-1 sweep's record)."""
        found = {}
        for family, entry in self.record.stage2.items():
            other = SweepFolder(self.path.parent / entry["name"])
            if other.has_record() and other.file(TRIALS_FILE).is_file():
                found[family] = other.load()
        return found

    def stages_summary(self) -> list[dict[str, Any]]:
        """Each family of a two-stage sweep: its stage-1 pick (tested once) beside its stage-2 sweep's winner."""
        picks = {row["family"]: row for row in self.final or []}
        rows = []
        for family, second in sorted(self.stage2().items()):
            first = picks.get(family, {})
            test = second.record.test or {}
            winner = second.trial(second.record.winner) if second.record.winner else None
            rows.append({"family": family, "stage1_trial": first.get("trial_id"), "stage1_val": first.get("val_top1"),
                         "stage1_test": first.get("test_top1"), "stage2_sweep": second.name,
                         "stage2_trial": second.record.winner,
                         "stage2_val": winner["best_val_top1"] if winner else None, "stage2_test": test.get("top1"),
                         "model_uri": second.record.model_uri})
        return rows

    @functools.cached_property
    def frames(self) -> "SweepFrames":
        import pandas as pd

        def frame(rows: list[dict] | None, columns) -> Any:
            return None if rows is None else pd.DataFrame(rows, columns=list(columns) if not rows else None)

        return SweepFrames(frame(self.trials, trials_schema().names),
                           frame(self.epochs, ("trial_id",) + EPOCH_COLUMNS),
                           frame(self.final, FINAL_SCHEMA.names))


@dataclass
class SweepFrames:
    """The tables as pandas DataFrames, for analysis and figures."""

    trials: Any
    epochs: Any | None
    final: Any | None


def load(path: str | os.PathLike) -> Sweep:
    """The sweep folder at `path` (STORAGE/NAME), read."""
    return SweepFolder(Path(path).expanduser()).load()


def trials_schema() -> pa.Schema:
    default = TrialConfig()
    config_types = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    return pa.schema([pa.field(c, t) for c, t in TRIAL_COLUMNS.items()]
                     + [pa.field(k, config_types[type(getattr(default, k))]) for k in TrialConfig.keys()])


def write_table(path: str | os.PathLike, table: pa.Table) -> Path:
    """`table` as the Parquet file `path`, written aside and renamed: a reader sees the old table or the new one."""
    return _write_aside(Path(path), lambda tmp: pq.write_table(table, tmp))


def _write_aside(path: Path, write) -> Path:
    """write(tmp) then rename onto `path`: readers see the old file or the new one, never half of one. A failed
    write leaves `path` as it was (and no temporary file behind)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _flock_soon(handle, kind: int, within_s: float = 1.0) -> None:
    """flock without blocking, tried again for `within_s`: another command's probe (check_unlocked) holds the lock
    for an instant only, a driver holds it for its lifetime. BlockingIOError when it stays held."""
    import fcntl

    deadline = time.monotonic() + within_s
    while True:
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _write_holder(handle) -> None:
    """Who holds the lock now, for the line a refused driver prints."""
    import socket

    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    handle.flush()


def _warn_unlocked(path: Path) -> None:
    """Once per file system (per process): this folder cannot be locked, so two drivers are not kept apart."""
    try:
        device = str(os.stat(path).st_dev)
    except OSError:
        device = str(path)
    if device in _WARNED_UNLOCKED:
        return
    _WARNED_UNLOCKED.add(device)
    from rich.markup import escape

    from tuner.cli import console

    console().print(f"[dim]the sweep folder {escape(str(path))} cannot be locked on this file system (no flock); nothing stops "
                    f"a second driver on the same sweep: run one at a time[/dim]", soft_wrap=True, markup=True)
