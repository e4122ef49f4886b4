"""SweepSpec: everything one sweep needs, validated before anything is started or written.

Its fields carry their command-line flags (`Flag`): tuner.run generates its parser from them, and build_spec
takes the parsed values by the same names, so a flag is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray.tune.search.sample import Domain

from search_spaces import SPACES, SearchSpace, get_space
from trainables.config import HUB, TrialConfig, parse_value
from trainables.data import DATASETS
from trainables.errors import UserError
from tuner.stopping import Target, parse_duration
from tuner.stopping import parse_target as stopping_target

@dataclass(frozen=True)
class Flag:
    """How a SweepSpec field is given on the command line: the parser is generated from these (tuner.run)."""

    help: str
    default: Any = None  # the command line's default (None: the space's, or resolved by build_spec)
    type: Callable[[str], Any] | None = None  # argparse's conversion; the rest is checked by build_spec
    metavar: str | None = None
    name: str | None = None  # the flag (default: --field-name)
    dest: str | None = None  # build_spec's keyword (default: the field name)
    append: bool = False  # repeatable

    def add_to(self, parser: argparse.ArgumentParser, field_name: str) -> None:
        kwargs: dict[str, Any] = {"help": self.help, "metavar": self.metavar, "dest": self.dest or field_name}
        if self.append:
            kwargs.update(action="append", default=[])
        else:
            kwargs.update(default=self.default, type=self.type)
        parser.add_argument(self.name or "--" + field_name.replace("_", "-"), **kwargs)


def _field(default: Any, flag: Flag | None = None) -> Any:
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kind, metadata={"flag": flag} if flag else {})


@dataclass(frozen=True)
class SweepSpec:
    """One sweep, every value resolved and checked. Field order is the order of the flags in --help."""

    space: str = _field("", Flag("search space name (see --list-spaces)"))
    dataset: str = _field("", Flag("cifar10 | cifar100 | digits | folder (default: the space's)"))
    data_dir: str | None = _field(None, Flag("folder holding the data set (CIFAR files, or an image folder)"))
    num_samples: int = _field(0, Flag("number of trials (default: the space's)", type=int))
    max_epochs: int = _field(0, Flag("epochs per trial, the ASHA budget (default: the space's)", type=int))
    overrides: dict[str, Any] = _field(dict, Flag(  # from --set, typed
        "pin a trial-config key, e.g. --set lr=3e-3 (repeatable)", name="--set", dest="sets", metavar="KEY=VALUE",
        append=True))
    gpus_per_trial: float | str = _field(0.0, Flag(  # "auto": measured and packed when the sweep starts
        "GPUs per trial; 0.25 packs 4 trials per GPU; auto measures a training step and packs as many as fit",
        default="0", metavar="F|auto"))
    cpus_per_trial: float = _field(1.0, Flag("CPUs per trial (default 1)", default=1.0, type=float))
    memory_per_trial: float | str = _field("auto", Flag(  # bytes, or "auto": measured when the sweep starts
        "host memory per trial, told to Ray so it never runs more trials than a node holds: auto (measured per "
        "model x batch x image size) or a size such as 6GB", default="auto", metavar="auto|SIZE"))
    max_concurrent: int | None = _field(None, Flag("at most this many trials at once", type=int))
    address: str | None = _field(None, Flag("join a running Ray cluster (auto, HOST:PORT, ray://HOST:PORT)"))
    mlflow_uri: str | None = _field(None, Flag("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                               "./mlflow.db)"))
    storage: str = _field("", Flag("folder for sweep results, shared by every node on a cluster (default ./sweeps)",
                                   default="sweeps"))  # absolute; the sweep lives in storage/name
    name: str = _field("", Flag("sweep name (default: SPACE-DATASET-TIME)"))
    seed: int = _field(0, Flag("seed of the searcher and of the trials", default=0, type=int))
    warm_start: str | None = _field(None, Flag(  # an earlier sweep's folder whose best configs run first
        "run the best configs of an earlier sweep (its STORAGE/NAME folder) first", metavar="SWEEP_DIR"))
    time_budget_s: float | None = _field(None, Flag(  # seconds; the budget spent so far is in sweep.json
        "end the sweep cleanly after this long, e.g. 90m, 2h: running trials stop, the best so far is tested and "
        "registered", name="--time-budget", dest="time_budget", metavar="DURATION"))
    stop_at: str | None = _field(None, Flag(  # METRIC=VALUE, checked by build_spec
        "end the sweep once a trial reaches a target, e.g. val_top1=95", metavar="METRIC=VALUE"))
    reseed: int = _field(0, Flag("re-train each model's top configs with K new seeds; pick and report mean ± std",
                                 default=0, type=int, metavar="K"))
    reseed_top: int = _field(3, Flag("configs per model to re-train (3)", default=3, type=int, metavar="N"))
    objectives: tuple[str, ...] = _field(tuple, Flag(  # names, accuracy first (tuner.objectives)
        "optimise accuracy and deployment costs together, e.g. val_top1,latency_ms (also params_m, model_mb, "
        "images_per_s, peak_mem_mb); the sweep reports their Pareto front (default: the space's)",
        name="--objective", dest="objective", metavar="METRICS"))
    constraints: tuple[str, ...] = _field(tuple, Flag(  # e.g. latency_ms<=5; replace the space's when given
        "a budget a trial must meet, e.g. latency_ms<=5 (repeatable); configs breaking a cost budget are never "
        "trained", name="--constraint", dest="constraint", metavar="METRIC<=VALUE", append=True))
    sampler: str = _field("tpe", Flag("multi-objective Optuna sampler: tpe or nsga2 (with --objective)",
                                      default="tpe", metavar="tpe|nsga2"))
    cost_runtime: str = _field("eager", Flag("runtime costs are measured with: eager, torchscript, onnxruntime, "
                                             "compile", default="eager", metavar="RUNTIME"))
    cost_device: str = _field("cpu", Flag("device costs are measured on: cpu or cuda", default="cpu",
                                          metavar="cpu|cuda"))
    cost_threads: int = _field(1, Flag("CPU threads of the cost measurement (1)", default=1, type=int, metavar="N"))
    cost_batch: int = _field(64, Flag("batch of the images_per_s measurement (64; latency_ms is at batch 1)",
                                      default=64, type=int, metavar="N"))
    then_dataset: str | None = _field(None)  # a two-stage space's stage-2 data set: --dataset if given, else its own
    model_name: str | None = _field(None)  # the registered model's name (default SPACE-DATASET; stage 2: per family)
    space_content: dict[str, Any] | None = _field(None)  # the whole space as it was at the start (tuner.space_files)
    space_file: str | None = _field(None)  # the file it came from, if a file

    @property
    def multi_objective(self) -> bool:
        """Costs are measured and searched against (--objective with a cost, or any --constraint)."""
        return len(self.objectives) > 1 or bool(self.constraints)

    @property
    def registered_name(self) -> str:
        return self.model_name or f"{self.space}-{self.dataset}"

    @property
    def sweep_dir(self) -> Path:
        return Path(self.storage) / self.name

    @functools.cached_property
    def search_space(self) -> SearchSpace:
        """The space as it was when the sweep started (sweep.json keeps its content: a resumed sweep runs it even if
        its file or a built-in space changed since); specs of sweeps made before that, by name."""
        if self.space_content is not None:
            from tuner.space_files import space_from_dict

            return space_from_dict(self.space_content, "sweep.json")
        return SPACES[self.space]

    def param_space(self) -> dict[str, Any]:
        """What Ray Tune samples. Later layers win: the space's fixed keys < the epoch budget < its searched keys
        (a space may search max_epochs below the budget) < the data set's adjustments (which may pin a key or
        re-range it) < --set and an explicit --max-epochs."""
        space = self.search_space
        return {"seed": self.seed, **space.fixed, "max_epochs": self.max_epochs, **space.params,
                **space.dataset_overrides.get(self.dataset, {}), **self.overrides}

    def searched_keys(self) -> list[str]:
        return [k for k, v in self.param_space().items() if isinstance(v, Domain) or
                (isinstance(v, dict) and "grid_search" in v)]

    def described_space(self) -> dict[str, str]:
        """Every key of the param space as `search.KEY` (its distribution) or `fixed.KEY` (its value): the parent
        run's params, so searched and fixed keys are told apart."""
        out = {}
        for key, value in self.param_space().items():
            searched = isinstance(value, Domain) or (isinstance(value, dict) and "grid_search" in value)
            out[f"{'search' if searched else 'fixed'}.{key}"] = describe_domain(value)
        return out

    def to_json(self) -> dict[str, Any]:
        """Without storage and name: a sweep folder's own place says where it is (copies and moves keep working)."""
        data = dataclasses.asdict(self)
        del data["storage"], data["name"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SweepSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def describe_domain(value: Any) -> str:
    """A Ray Tune domain as the words a space file uses: loguniform(0.0001, 0.01), choice(['a', 'b']),
    qrandint(1, 10, 2), grid([...]); a plain value as itself."""
    if isinstance(value, dict) and "grid_search" in value:
        return f"grid({list(value['grid_search'])})"
    if not isinstance(value, Domain):
        return str(value)
    sampler = value.get_sampler()
    q = getattr(sampler, "q", None)
    inner = type(getattr(sampler, "sampler", sampler)).__name__
    if hasattr(value, "categories"):
        return f"choice({list(value.categories)})"
    integer = type(value).__name__ == "Integer"
    kind = {"_LogUniform": "log", "_Normal": "normal"}.get(inner, "")
    name = ("q" if q else "") + ("lograndint" if integer and kind == "log" else "randint" if integer else
                                 "loguniform" if kind == "log" else "randn" if kind == "normal" else "uniform")
    if name == "qrandint" or name.startswith("qlog") or name == "quniform":
        return f"{name}({value.lower}, {value.upper}, {q})"
    return f"{name}({value.lower}, {value.upper})"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Every SweepSpec flag, in field order."""
    for f in dataclasses.fields(SweepSpec):
        if "flag" in f.metadata:
            f.metadata["flag"].add_to(parser, f.name)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """build_spec's keyword arguments from parsed flags."""
    return {flag.dest or f.name: getattr(args, flag.dest or f.name) for f in dataclasses.fields(SweepSpec)
            if (flag := f.metadata.get("flag"))}


def build_spec(*, space: str, dataset: str | None = None, data_dir: str | None = None,
               num_samples: int | None = None, max_epochs: int | None = None, sets: list[str] = (),
               gpus_per_trial: float | str = 0.0, cpus_per_trial: float = 1.0, memory_per_trial: float | str = "auto",
               max_concurrent: int | None = None,
               address: str | None = None, mlflow_uri: str | None = None, storage: str = "sweeps",
               name: str | None = None, seed: int = 0, reseed: int = 0, reseed_top: int = 3,
               warm_start: str | None = None, time_budget: str | float | None = None,
               stop_at: str | None = None, objective: str | None = None, constraint: list[str] = (),
               sampler: str = "tpe", cost_runtime: str = "eager", cost_device: str = "cpu", cost_threads: int = 1,
               cost_batch: int = 64, dry_run: bool = False) -> SweepSpec:
    """Check every user choice and return a spec, or raise UserError naming the first mistake. A `dry_run` spec
    needs none of the space's required keys (pretrained weights): --dry-run builds models with random weights."""
    from tuner.space_files import is_space_path, load_space_file, space_to_dict

    space_file = None
    if is_space_path(space):
        chosen, space_file = load_space_file(space), str(Path(space).expanduser().resolve())
    else:
        chosen = get_space(space)
    if chosen is None:
        raise UserError(f"unknown space '{space}'; known spaces: {', '.join(sorted(SPACES))} (see --list-spaces), "
                        f"or a space file (.yaml, .yml, .toml, .py)")
    space = chosen.name
    then_dataset = (dataset or chosen.then.dataset).lower() if chosen.then is not None else None
    dataset = (dataset or chosen.dataset).lower()  # MNIST, FashionMNIST: as torchvision spells them
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    for flag, value in (("--num-samples", num_samples), ("--max-epochs", max_epochs)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    overrides = parse_sets(sets)
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs  # an explicit budget pins it, also where a space searches it
    for key, how in chosen.requires.items():
        if not overrides.get(key) and not dry_run:
            raise UserError(f"space '{space}' needs {how}")
    if overrides.get("pretrained") not in (None, "", HUB):  # trials run in their own folders: make the path absolute
        weights = Path(overrides["pretrained"]).expanduser().resolve()
        if not weights.exists():
            raise UserError(f"--set pretrained={overrides['pretrained']}: no such file or folder")
        overrides["pretrained"] = str(weights)
    num_samples = chosen.num_samples if num_samples is None else num_samples
    max_epochs = overrides.get("max_epochs", chosen.max_epochs)
    if reseed < 0 or reseed_top < 1:
        raise UserError(f"--reseed must be >= 0 and --reseed-top >= 1, got {reseed} and {reseed_top}")
    if warm_start is not None:  # its trials are read (and checked) by tuner.experiment.warm_start_points
        warm_start = str(Path(warm_start).expanduser().resolve())
    if not 0 <= seed <= MAX_SEED:  # Optuna's and numpy's seeds are 32-bit
        raise UserError(f"--seed must lie in [0, {MAX_SEED}], got {seed}")
    budget = None if time_budget is None else parse_duration(str(time_budget))
    if stop_at is not None:
        parse_target(stop_at)
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent must be a positive integer, got {max_concurrent}")
    gpus_per_trial = parse_gpus(gpus_per_trial)
    if (gpus_per_trial != "auto" and gpus_per_trial < 0) or cpus_per_trial <= 0:
        raise UserError("--gpus-per-trial must be >= 0 and --cpus-per-trial > 0")
    if gpus_per_trial != "auto" and gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise UserError(f"--gpus-per-trial {gpus_per_trial}: above 1 it must be a whole number of GPUs")
    if name is not None:
        check_name(name)
    objectives, constraints = check_objectives(chosen, objective, constraint, sampler)
    from tuner.objectives import check_settings

    check_settings(cost_runtime, cost_device, cost_threads, cost_batch)
    spec = SweepSpec(
        space=space, dataset=dataset, num_samples=num_samples, max_epochs=max_epochs,
        storage=_storage_path(storage), name=name or f"{space}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
        data_dir=str(Path(data_dir).expanduser().resolve()) if data_dir else None,
        overrides=overrides, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
        memory_per_trial=parse_memory(memory_per_trial),
        max_concurrent=max_concurrent, address=address, mlflow_uri=mlflow_uri, seed=seed, reseed=reseed,
        reseed_top=reseed_top, warm_start=warm_start, then_dataset=then_dataset, time_budget_s=budget,
        stop_at=stop_at, objectives=objectives, constraints=constraints, sampler=sampler,
        cost_runtime=cost_runtime, cost_device=cost_device, cost_threads=cost_threads, cost_batch=cost_batch,
        space_content=space_to_dict(chosen), space_file=space_file)
    validate_trial_configs(spec)
    return spec


def check_objectives(space: SearchSpace, objective: str | None, constraint: list[str],
                     sampler: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--objective and --constraint (else the space's objectives and constraints), checked; as names and texts."""
    from tuner.objectives import is_multi_objective, parse_constraints, parse_objectives

    objectives = parse_objectives(objective) if objective else parse_objectives(space.objectives, "objectives")
    constraints = parse_constraints(constraint) if constraint else parse_constraints(space.constraints, "constraints")
    if constraints and not objectives:
        objectives = parse_objectives("val_top1")
    if sampler not in ("tpe", "nsga2"):
        raise UserError(f"--sampler {sampler}: choose tpe or nsga2")
    if is_multi_objective(objectives, constraints) and space.search == "optuna" and space.metric != "val_top1":
        raise UserError(f"--objective needs a space selected on val_top1 (space '{space.name}' uses {space.metric})")
    return tuple(o.name for o in objectives), tuple(str(c) for c in constraints)


MAX_SEED = 2 ** 31 - 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}")


def check_name(name: str) -> str:
    """A sweep name is one folder name inside --storage: nothing that could reach outside it."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"--name {name!r}: a sweep name is one folder name inside --storage: letters, digits and "
                        f". _ + = @ -, starting with a letter or digit, at most 128 characters")
    return name
TARGET_METRICS = ("val_top1", "val_top5", "best_val_top1", "val_loss", "train_loss")  # what --stop-at may name
# the values each can take: accuracies are percentages, losses (cross-entropy, BCE) never negative
TARGET_BOUNDS = {metric: (0.0, float("inf")) if metric.endswith("loss") else (0.0, 100.0) for metric in TARGET_METRICS}


def parse_target(text: str) -> Target:
    """--stop-at METRIC=VALUE as a stopping.Target (losses are minimised, accuracies maximised); a target the
    metric can never reach (val_top1=200) would let the sweep run its whole budget: refused."""
    target = stopping_target(text, TARGET_METRICS, lambda m: "min" if m.endswith("loss") else "max")
    low, high = TARGET_BOUNDS[target.metric]
    if not low <= target.value <= high:
        allowed = f"lie in [{low:g}, {high:g}]" if high < float("inf") else f"be >= {low:g}"
        raise UserError(f"--stop-at {text!r}: {target.metric} is {'a percentage' if high == 100 else 'a loss'}, "
                        f"so the target must {allowed}, got {target.value:g}")
    return target


def parse_gpus(value: float | str) -> float | str:
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            raise UserError(f"--gpus-per-trial {value!r}: give a number of GPUs (0.25 packs 4 trials per GPU) "
                            f"or auto") from None
    return float(value)


_SIZE_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "m": 2 ** 20, "mb": 2 ** 20, "g": 2 ** 30, "gb": 2 ** 30,
               "t": 2 ** 40, "tb": 2 ** 40, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_memory(value: float | str) -> float | str:
    """--memory-per-trial: "auto", or a size (6GB, 512MB, 1.5GiB, plain bytes) -> bytes (GB counted as GiB)."""
    import re

    if isinstance(value, (int, float)):
        if value <= 0:
            raise UserError(f"--memory-per-trial {value}: give a size above zero, e.g. 6GB, or auto")
        return float(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not match or match.group(2) not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise UserError(f"--memory-per-trial {value!r}: give a size such as 6GB, 512MB or 1.5GiB, or auto")
    return float(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_sets(sets: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. --set lr=3e-3")
        overrides[key.strip()] = parse_value(key.strip(), text.strip())
    return overrides


def validate_trial_configs(spec: SweepSpec, samples: int = 3) -> None:
    """Sample a few configs from the space and validate each: bad keys and ranges fail here, not in trial 7."""
    space = spec.param_space()
    for key, value in space.items():
        if isinstance(value, Domain):
            TrialConfig.from_dict({key: value.sample()})  # names the key if it is unknown
    for config in sample_configs(spec, samples):
        cfg = TrialConfig.from_dict(config)
        if cfg.max_epochs > spec.max_epochs:
            raise UserError(f"space '{spec.space}' samples max_epochs={cfg.max_epochs} above the sweep's budget of "
                            f"{spec.max_epochs}; raise --max-epochs")


def sample_configs(spec: SweepSpec, n: int) -> list[dict[str, Any]]:
    """A few concrete configs drawn from the space (grid axes sampled like choices)."""
    import random

    rng = random.Random(spec.seed)
    out = []
    for _ in range(n):
        config = {}
        for key, value in spec.param_space().items():
            if isinstance(value, Domain):
                config[key] = value.sample(random_state=rng.randrange(2 ** 31))
            elif isinstance(value, dict) and "grid_search" in value:
                config[key] = rng.choice(value["grid_search"])
            else:
                config[key] = value
        out.append(plain_config(config))
    return out


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars from samplers -> Python numbers, so configs print and serialise cleanly."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}


def _storage_path(storage: str) -> str:
    if "://" in storage:
        # Ray could write trials to an object store, but sweep.json, the Parquet tables and --resume need a
        # file system path that the driver and every node share.
        raise UserError(f"--storage {storage}: object-store URIs are not supported; use a folder on a file system "
                        f"every node mounts at the same path (NFS, Lustre, a ReadWriteMany volume)")
    return str(Path(storage).expanduser().resolve())


def check_storage_writable(spec: SweepSpec) -> None:
    root = Path(spec.storage)
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"--storage {spec.storage} is not writable ({existing} is not a writable folder); choose a "
                        f"folder you can write to")
