"""Search spaces from files: a user's YAML, TOML or Python file of a built-in space's fields, checked as carefully
(trial-config values by TrialConfig's own code, as for --set; each distribution, Ray Tune's function of that name
with its positional arguments, e.g. {loguniform: [1.0e-4, 1.0e-2]}; a few sampled configs). Each mistake is one
UserError line, `FILE:LINE: KEY.PATH: what is wrong; what is allowed`. space_to_dict writes a space back."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import random
import re
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn

import yaml
from ray import tune
from ray.tune.search.sample import Domain

from search_spaces.base import Asha, SearchSpace
from trainables.config import PROVENANCE, TrialConfig, coerce, unknown_key_message
from trainables.data import DATASETS
from trainables.errors import UserError, error_line
from tuner.objectives import space_budget
from tuner.space_values import DISTRIBUTIONS, NUMERIC, KeyPath, dotted, kind_of, plain, reach

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

SPACE_FILE_SUFFIXES = (".yaml", ".yml", ".toml", ".py")
FIELDS = tuple(f.name for f in dataclasses.fields(SearchSpace))
REQUIRED = ("name", "description", "dataset", "fixed", "params")
SEARCHES = ("optuna", "grid", "random")
MODES = ("max", "min")
ASHA_FIELDS = tuple(f.name for f in dataclasses.fields(Asha))
INTEGER_DISTRIBUTIONS = tuple(name for name in DISTRIBUTIONS if name.endswith("randint")) + ("choice", "grid")
KEYS = {f.name: f for f in dataclasses.fields(TrialConfig)}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # it names sweep folders and the registered model
SAMPLES = 3  # configs drawn per data set to check combinations, as tuner.spec does for built-in spaces
DEFAULT_METRIC = "val_top1"
EXAMPLE = "{loguniform: [1.0e-4, 1.0e-2]} or {choice: [32, 64]}"


@dataclass(frozen=True)
class _Where:
    """The file a space came from and the line of each key path in it, so every error names both."""

    source: str
    lines: Mapping[KeyPath, int] = field(default_factory=dict)

    def line(self, path: KeyPath) -> int | None:  # the key's own line, else that of its nearest enclosing key
        return next((self.lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in self.lines), None)

    def fail(self, path: KeyPath, message: str, show: KeyPath | None = None) -> NoReturn:
        line, shown = self.line(path), dotted(path if show is None else show)
        raise UserError(f"{self.source}{f':{line}' if line else ''}: {shown + ': ' if shown else ''}{message}")


def _hint(word: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def is_space_path(value: str) -> bool:
    """--space NAME names a built-in space; a value with a space file's suffix or a slash names a file."""
    return value.lower().endswith(SPACE_FILE_SUFFIXES) or "/" in value


def find_space_files(folder: str | Path = "spaces") -> list[Path]:
    """The space files in `folder` (not its subfolders), sorted; hidden files and __init__.py left out."""
    root = Path(folder)
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SPACE_FILE_SUFFIXES
                  and not p.name.startswith((".", "__"))) if root.is_dir() else []


def space_digest(space: SearchSpace) -> str:
    """sha256 of the space's dict form: a resumed sweep compares it to tell whether its space file changed."""
    return hashlib.sha256(json.dumps(space_to_dict(space), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_space_file(path: str | Path) -> SearchSpace:
    """A YAML, TOML or Python space file, validated; any mistake is one UserError line naming the file."""
    file, source = Path(path).expanduser(), str(path)
    suffix = file.suffix.lower()
    if suffix not in SPACE_FILE_SUFFIXES:
        raise UserError(f"{source}: not a space file; a space file ends in {', '.join(SPACE_FILE_SUFFIXES)}")
    if not file.is_file():
        raise UserError(f"{source}: no such space file")
    if suffix == ".py":
        return _load_python(file, source)
    try:
        text = file.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise UserError(f"{source}: cannot read it as UTF-8 text: {error_line(error)}") from None
    data, lines = _read_toml(text, source) if suffix == ".toml" else _read_yaml(text, source)
    if data is None or data == {}:
        raise UserError(f"{source}: the file is empty; a space file is a mapping of the fields {', '.join(REQUIRED)} "
                        f"(and optionally {', '.join(f for f in FIELDS if f not in REQUIRED)})")
    return _space(data, _Where(source, lines), (), stage2=False)


def space_from_dict(data: dict, source: str) -> SearchSpace:
    """A space from its dict form (a parsed file, or sweep.json's copy), validated; errors name `source`."""
    return _space(data, _Where(source), (), stage2=False)


def space_to_dict(space: SearchSpace) -> dict:
    """The space in the file format, JSON-safe: Ray domains as {loguniform: [...]}, grids as {grid: [...]}."""
    return plain(space, f"space '{space.name}'", ())


class _YamlLoader(yaml.SafeLoader):
    """Safe loading, and 1e-4 read as a number: YAML 1.1 reads only 1.0e-4 as one and gives '1e-4' as a string."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _read_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is not None:  # before construction, which merges `<<:` keys into the node tree
            _yaml_lines(node, (), lines, source, set())
        return (None if node is None else loader.construct_document(node)), lines
    except yaml.YAMLError as error:  # a MarkedYAMLError knows its line
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        problem = getattr(error, "problem", None) or getattr(error, "context", None) or error_line(error)
        raise UserError(f"{source}{f':{mark.line + 1}' if mark else ''}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()


def _yaml_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], source: str, above: set[int]) -> None:
    """Each key path's line from PyYAML's node marks; a duplicate key (YAML would keep the last) is refused."""
    if id(node) in above:  # an alias of an enclosing node
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            if key in lines:
                raise UserError(f"{source}:{key_node.start_mark.line + 1}: {dotted(key)}: duplicate key (first at "
                                f"line {lines[key]}); give each key once")
            lines[key] = key_node.start_mark.line + 1
            _yaml_lines(value_node, key, lines, source, above | {id(node)})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _yaml_lines(item, (*path, index), lines, source, above | {id(node)})


def _read_toml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    try:
        return tomllib.loads(text), _toml_lines(text)
    except tomllib.TOMLDecodeError as error:
        message, at = str(error), re.search(r"\s*\(at line (\d+), column (\d+)\)", str(error))
        where = f"{source}:{at.group(1)}: not valid TOML: {message[:at.start()]}, column {at.group(2)}" if at else \
            f"{source}: not valid TOML: {message}"
        raise UserError(where) from None


def _toml_lines(text: str) -> dict[KeyPath, int]:
    """tomllib gives positions only for decode errors: a scan finds `[table]` headers and `key =` lines (an inline
    table is one line, so its keys fall back to its own)."""
    lines: dict[KeyPath, int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        if header := re.match(r"\s*\[([\w.-]+)\]", line):  # [params], [dataset_overrides.digits]
            table = tuple(header.group(1).split("."))
            lines.setdefault(table, number)
        elif key := re.match(r"\s*([\w.-]+)\s*=", line):  # lr = ..., params.lr = ...
            lines.setdefault((*table, *key.group(1).split(".")), number)
    return lines


def _load_python(file: Path, source: str) -> SearchSpace:
    """Run the file as a module of its own, gone from sys.modules afterwards, and take its SPACE."""
    try:  # compiled here rather than imported: no __pycache__ is left beside the user's file
        code = compile(file.read_bytes(), str(file), "exec")
    except (SyntaxError, ValueError) as error:  # ValueError: null bytes
        raise UserError(f"{source}:{getattr(error, 'lineno', 1)}: importing it raised {type(error).__name__}: "
                        f"{getattr(error, 'msg', error)}") from None
    module = types.ModuleType("space_file_" + hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16])
    module.__file__ = str(file)
    sys.modules[module.__name__] = module  # while it runs: dataclasses and typing look a class's module up there
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as error:
        frames = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == str(file)]
        raise UserError(f"{source}{f':{frames[-1]}' if frames else ''}: importing it raised {error_line(error)}"
                        ) from None
    finally:
        sys.modules.pop(module.__name__, None)
    space = module.__dict__.get("SPACE")
    if not isinstance(space, SearchSpace):
        what = "SPACE is " + kind_of(space) if "SPACE" in module.__dict__ else "defines no SPACE"
        raise UserError(f"{source}: {what}; a Python space file sets SPACE = SearchSpace(...) (from "
                        f"search_spaces.base import SearchSpace, Asha)")
    # Through the dict form: checked exactly as a YAML file is, and what runs is what sweep.json records
    return space_from_dict(plain(space, source, ()), source)


def _space(data: Any, where: _Where, path: KeyPath, stage2: bool) -> SearchSpace:
    if not isinstance(data, Mapping):
        where.fail(path, f"{'a second stage' if stage2 else 'the top level'} must be a mapping of fields "
                         f"({', '.join(REQUIRED)}, ...), got {kind_of(data)}")
    for key in data:
        if key not in FIELDS:
            where.fail((*path, str(key)), f"unknown field '{key}'{_hint(key, FIELDS)}; fields: {', '.join(FIELDS)}",
                       show=path)
        if key == "then" and stage2:
            where.fail((*path, key), "a second stage cannot have a `then` of its own: a space has at most two stages")
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        empty = " (it may be empty: {})" if missing[0] in ("fixed", "params") else ""
        where.fail(path, f"missing required field '{missing[0]}'{empty}; required: {', '.join(REQUIRED)}")
    values = _settings(data, where, path)
    values.update(_configs(data, where, path, values["search"]))
    then = data.get("then")
    space = SearchSpace(**values, then=None if then is None else _space(then, where, (*path, "then"), stage2=True))
    _check_samples(space, where, path)
    return space


def _settings(data: Mapping, where: _Where, path: KeyPath) -> dict[str, Any]:
    """Every field but the trial-config mappings and `then`, each checked; defaults as in SearchSpace."""
    def get(name: str) -> tuple[Any, _Where, KeyPath]:
        return data.get(name, getattr(defaults, name)), where, (*path, name)

    defaults = SearchSpace(name="", description="", reproduces="", dataset="", fixed={}, params={})
    name = _text(*get("name"))
    if not NAME_PATTERN.fullmatch(name):
        where.fail((*path, "name"), f"got {name!r}; a space name is letters, digits and . _ -, starting with a "
                                    f"letter or digit, at most 100 characters (it names sweep folders and models)")
    metric, mode = _text(*get("metric")), _one_of(*get("mode"), MODES)
    if metric != DEFAULT_METRIC or mode != "max":
        from trainables.classify import EPOCH_METRICS  # brings torch in: only for a space that chose its own metric

        best = "min" if _one_of(*get("metric"), EPOCH_METRICS).endswith("loss") else "max" if "top" in metric else mode
        if mode != best:
            where.fail((*path, "mode" if "mode" in data else "metric"), f"{metric} is best at its {best}imum: give "
                                                                        f"mode: {best}, not {mode}")
    return {"name": name, "description": _text(*get("description")),
            "reproduces": _text(*get("reproduces"), empty=True, one_line=False),
            "dataset": _one_of(*_lower(*get("dataset")), DATASETS), "search": _one_of(*get("search"), SEARCHES),
            "metric": metric, "mode": mode, "asha": _asha(data.get("asha", {}), where, (*path, "asha")),
            "num_samples": _count(*get("num_samples"), 1),
            "max_epochs": _count(*get("max_epochs"), 1, KEYS["max_epochs"].metadata["max"]),
            "folder_image_size": _count(*get("folder_image_size"), 1, KEYS["image_size"].metadata["max"]),
            **space_budget(data, lambda key, message: where.fail((*path, key), message))}


def _text(value: Any, where: _Where, path: KeyPath, empty: bool = False, one_line: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        where.fail(path, f"needs {'a' if empty else 'a non-empty'} string, got {kind_of(value)}")
    if one_line and "\n" in value.strip():
        where.fail(path, "must be one line")
    return value.strip()


def _one_of(value: Any, where: _Where, path: KeyPath, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        where.fail(path, f"got {value!r}{_hint(value, allowed)}; allowed: {', '.join(allowed)}")
    return value


def _lower(value: Any, where: _Where, path: KeyPath) -> tuple[Any, _Where, KeyPath]:
    """A data set's name as --dataset takes it: MNIST, FashionMNIST as torchvision spells them."""
    return (value.lower() if isinstance(value, str) else value), where, path


def _count(value: Any, where: _Where, path: KeyPath, low: int, high: float = math.inf) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        where.fail(path, f"needs a whole number >= {low}{f' and <= {high}' * (high < math.inf)}, got {value!r}")
    return value


def _asha(value: Any, where: _Where, path: KeyPath) -> Asha | None:
    if value is None or value is False:  # null, or false where the format has no null (TOML)
        return None
    for key, _, _ in _entries(value, where, path, "{grace_period: 1, reduction_factor: 3} (or null / false: no ASHA)"):
        if key not in ASHA_FIELDS:
            where.fail((*path, key), f"unknown field '{key}'{_hint(key, ASHA_FIELDS)}; asha fields: "
                                     f"{', '.join(ASHA_FIELDS)}", show=path)
    lows = {"grace_period": 1, "reduction_factor": 2}  # a rung is at least an epoch; a factor of 1 would stop none
    return Asha(**{f: _count(value.get(f, getattr(Asha(), f)), where, (*path, f), lows[f]) for f in ASHA_FIELDS})


def _entries(value: Any, where: _Where, path: KeyPath, example: str, keys: bool = False) -> Iterator[tuple]:
    """(key, value, key path) of a mapping; with `keys`, each key must be a trial-config key."""
    if not isinstance(value, Mapping):
        where.fail(path, f"needs a mapping, e.g. {example}; got {kind_of(value)}")
    for key, item in value.items():
        if keys and key not in KEYS:
            where.fail((*path, str(key)), unknown_key_message(str(key)))
        yield str(key), item, (*path, str(key))


def _configs(data: Mapping, where: _Where, path: KeyPath, search: str) -> dict[str, Any]:
    """fixed, params, dataset_overrides and requires: trial-config keys, values and distributions."""
    fixed, params, overrides, requires = {}, {}, {}, {}
    for key, value, at in _entries(data["fixed"], where, (*path, "fixed"), "{model: cnn_basic}", keys=True):
        if key in ("max_epochs", "seed"):  # SweepSpec.param_space would overrule a fixed value of either
            where.fail(at, f"is set by {'the max_epochs field (the budget)' if key == 'max_epochs' else '--seed'}, "
                           f"not here")
        fixed[key] = _value(key, value, where, at)
    for key, value, at in _entries(data["params"], where, (*path, "params"), "{lr: {loguniform: [1.0e-4, 0.01]}}",
                                   keys=True):
        if key in fixed:
            line = where.line((*path, "fixed", key))
            where.fail(at, f"'{key}' is also under fixed{f' (line {line})' * bool(line)}; a key is fixed or searched")
        params[key] = _domain(key, value, where, at, search)
    for dataset, adjust, at in _entries(data.get("dataset_overrides", {}), where, (*path, "dataset_overrides"),
                                        "{digits: {width: 0.25}}"):
        dataset = _one_of(*_lower(dataset, where, at), DATASETS)
        overrides[dataset] = {}
        for key, value, key_at in _entries(adjust, where, at, "{width: 0.25, batch_size: 32}", keys=True):
            if key == "seed":  # it would overrule --seed
                where.fail(key_at, "is set by --seed, not by a data set's adjustments")
            overrides[dataset][key] = (_domain(key, value, where, key_at, search) if isinstance(value, Mapping)
                                       else _value(key, value, where, key_at))
    for key, how, at in _entries(data.get("requires", {}), where, (*path, "requires"),
                                 "{pretrained: 'give --set pretrained=hub or =PATH'}", keys=True):
        requires[key] = _text(how, where, at)
    return {"fixed": fixed, "params": params, "dataset_overrides": overrides, "requires": requires}


def _value(key: str, value: Any, where: _Where, path: KeyPath, lead: str = "") -> Any:
    """One value of a trial-config key, checked by the same code (and with the same message) as --set KEY=VALUE."""
    if isinstance(value, (Mapping, list, tuple)) or (value is None and type(KEYS[key].default) is str):
        where.fail(path, f"{lead}config key '{key}' takes one plain value (a number, a string or true/false), got "
                         f"{kind_of(value)}; a distribution belongs under params")
    try:
        coerce(KEYS[key], value)
    except UserError as error:
        where.fail(path, f"{lead}{error}")
    return value  # as written: space_to_dict gives it back unchanged


def _domain(key: str, value: Any, where: _Where, path: KeyPath, search: str) -> Any:
    """{name: args} -> the Ray Tune domain of that name, its arguments and reach checked against the key."""
    if not (isinstance(value, Mapping) and len(value) == 1):
        where.fail(path, f"a searched key takes one distribution, e.g. {EXAMPLE}; got {kind_of(value)}; distributions: "
                         f"{', '.join(DISTRIBUTIONS)} (to hold '{key}' at one value, put it under fixed)")
    ((name, args),) = value.items()
    at = (*path, str(name))
    if name not in DISTRIBUTIONS:
        where.fail(at, f"unknown distribution '{name}'{_hint(name, DISTRIBUTIONS)}; distributions: "
                       f"{', '.join(DISTRIBUTIONS)}", show=path)
    if PROVENANCE in KEYS[key].metadata["tags"]:
        where.fail(at, f"'{key}' says where a trial came from, not how it trains: never searched (use --set)",
                   show=path)
    kind = type(KEYS[key].default)
    allowed = ("choice", "grid") if kind in (bool, str) else INTEGER_DISTRIBUTIONS if kind is int else DISTRIBUTIONS
    if name not in allowed:
        where.fail(at, f"config key '{key}' takes a{'n' if kind is int else ''} {kind.__name__}: search it with "
                       f"{', '.join(allowed)}, not {name}", show=path)
    if name not in ("choice", "grid"):
        return _numeric(name, key, args, where, at, path)
    if not isinstance(args, list) or not args:
        where.fail(at, f"{name} takes a non-empty list of values, e.g. {name}: [32, 64]; got {kind_of(args)}",
                   show=path)
    if name == "grid" and search == "optuna":
        where.fail(at, "grid enumerates its values and Optuna cannot: use search: grid or random, or choice here",
                   show=path)
    for index, item in enumerate(args):
        _value(key, item, where, (*at, index))
    return tune.grid_search(list(args)) if name == "grid" else tune.choice(list(args))


def _numeric(name: str, key: str, args: Any, where: _Where, at: KeyPath, show: KeyPath) -> Domain:
    names, integer = NUMERIC[name], name.endswith("randint")
    usage = f"{name}: [{', '.join(names)}]"
    arity = (2, 3) if name == "qrandint" else (len(names),)  # Ray's qrandint has q=1 by default
    if not isinstance(args, list) or len(args) not in arity:
        where.fail(at, f"{name} takes {' or '.join(map(str, arity))} numbers ({usage}), got {kind_of(args)}", show=show)
    written = list(args)

    def fail(problem: str) -> NoReturn:
        where.fail(at, f"{name} {written!r}: {problem} ({usage})", show=show)

    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args):
        fail("every argument must be a number")
    if integer and not all(float(a).is_integer() for a in args):
        fail("every argument must be a whole number")
    lower, upper, *q = args = [int(a) if integer else float(a) for a in args]
    problems = [(q and q[0] <= 0, "q must be > 0"), ("log" in name and lower <= 0, "lower must be > 0 on a log scale"),
                (lower >= upper, "lower must be < upper")]
    if problem := next((problem for broken, problem in problems if broken), None):
        fail(problem)
    try:
        domain = getattr(tune, name)(*args)
    except ValueError as error:  # Ray's own checks, e.g. quniform's bounds that are not multiples of q
        fail(str(error).rstrip("."))
    low, high = reach(domain)
    if low > high:
        fail(f"no multiple of q={q[0]} lies between lower and upper")
    for bound in (low, high):
        try:
            coerce(KEYS[key], bound)
        except UserError as error:
            fail(f"reaches {bound:g}, and {error}")
    return domain


def _check_samples(space: SearchSpace, where: _Where, path: KeyPath) -> None:
    """Per data set, configs layered as SweepSpec.param_space does: max_epochs' reach, a few draws checked."""
    layers = {(): {}, **{("dataset_overrides", d): adjust for d, adjust in space.dataset_overrides.items()}}
    for layer, adjust in layers.items():
        origin = {**{k: ("fixed", k) for k in space.fixed}, "max_epochs": ("max_epochs",),
                  **{k: ("params", k) for k in space.params}, **{k: (*layer, k) for k in adjust}}
        config = {**space.fixed, "max_epochs": space.max_epochs, **space.params, **adjust}
        most = reach(config["max_epochs"])[1]
        if most > space.max_epochs:
            where.fail((*path, *origin["max_epochs"]), f"reaches max_epochs={most}, above the space's budget "
                                                       f"(max_epochs: {space.max_epochs}); raise it or lower this")
        rng = random.Random(0)
        for _ in range(SAMPLES):
            drawn = {key: value.sample(random_state=rng.randrange(2 ** 31)) if isinstance(value, Domain) else
                     rng.choice(value["grid_search"]) if isinstance(value, dict) else value
                     for key, value in config.items()}
            for key, value in drawn.items():
                _value(key, value, where, (*path, *origin[key]), lead=f"sampled {value!r}: ")
            try:
                TrialConfig.from_dict(drawn)
            except UserError as error:
                where.fail((*path, *layer), f"a sampled config fails: {error}")
