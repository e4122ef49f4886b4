"""The values of a search space: Ray Tune's distributions by name, a domain's reach, a space in its file form
(JSON-safe, as sweep.json keeps it), and how a value and its place are named in a space file's error lines."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ray.tune.search.sample import Categorical, Domain, Float, Function, Grid, Integer, LogUniform, Quantized, Uniform

from search_spaces.base import Asha, SearchSpace
from trainables.errors import UserError

# Ray Tune's bounded distributions and their positional arguments
NUMERIC = {name: ("lower", "upper", "q") if name[0] == "q" else ("lower", "upper") for name in (
    "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint", "lograndint", "qlograndint")}
DISTRIBUTIONS = (*NUMERIC, "choice", "grid")
KeyPath = tuple  # where a value sits in a space: ("params", "lr", "choice", 1)


def dotted(path: KeyPath) -> str:
    """("params", "lr", "choice", 1) -> params.lr.choice[1]"""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if i else str(p) for i, p in enumerate(path))


def kind_of(value: Any) -> str:
    """How an error line names a value: "an int 3", "a str 'x'" (long ones cut), "nothing"."""
    text, kind = repr(value), type(value).__name__
    return "nothing" if value is None else f"a{'n' * (kind[0] in 'aeiou')} {kind} {text[:57]}{'...' * (len(text) > 57)}"


def reach(value: Any) -> tuple[Any, Any]:
    """A domain's least and greatest sample (Ray's randint excludes upper unless q > 1); a plain value's own."""
    if isinstance(value, (Categorical, dict)):  # a choice, or tune.grid_search's {"grid_search": [...]}
        values = value.categories if isinstance(value, Categorical) else value["grid_search"]
        return min(values), max(values)
    if not isinstance(value, Domain):
        return value, value
    sampler = value.get_sampler()
    q = sampler.q if isinstance(sampler, Quantized) else 1
    if isinstance(value, Integer):
        return (value.lower, value.upper - 1) if q == 1 else (math.ceil(value.lower / q) * q, value.upper // q * q)
    return value.lower, value.upper


def plain(value: Any, label: str, path: KeyPath) -> Any:
    """A space (or any part of one) in the file format, JSON-safe; what has no such form is an error naming it."""
    if isinstance(value, SearchSpace):
        return {f.name: plain(getattr(value, f.name), label, (*path, f.name)) for f in dataclasses.fields(value)
                if not (f.name == "then" and value.then is None)}
    if isinstance(value, Domain):
        return domain_to_dict(value, label, path)
    if isinstance(value, Asha):
        return dataclasses.asdict(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, label, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, Mapping) and set(value) == {"grid_search"}:  # tune.grid_search(...)
        return {"grid": plain(list(value["grid_search"]), label, path)}
    if isinstance(value, Mapping):
        return {str(k): plain(v, label, (*path, str(k))) for k, v in value.items()}
    raise UserError(f"{label}: {dotted(path)}: {kind_of(value)} cannot be written to a space file")


def domain_to_dict(domain: Domain, label: str, path: KeyPath) -> dict:
    sampler = domain.get_sampler()
    q = sampler.q if isinstance(sampler, Quantized) else None
    inner = sampler.get_sampler() if q is not None else sampler
    if isinstance(domain, Categorical):
        return {"grid" if isinstance(inner, Grid) else "choice": plain(list(domain.categories), label, path)}
    if isinstance(domain, (Float, Integer)) and isinstance(inner, (Uniform, LogUniform)):
        cast, log = int if isinstance(domain, Integer) else float, isinstance(inner, LogUniform)
        name = ("lograndint" if log else "randint") if cast is int else ("loguniform" if log else "uniform")
        bounds = [cast(domain.lower), cast(domain.upper)]
        return {"q" + name: [*bounds, cast(q)]} if q is not None else {name: bounds}
    what = ("tune.sample_from(...)" if isinstance(domain, Function) else
            f"a {type(domain).__name__} domain with a {type(inner).__name__.strip('_')} sampler (tune.randn?)")
    raise UserError(f"{label}: {dotted(path)}: {what} cannot be written to a space file; use one of "
                    f"{', '.join(DISTRIBUTIONS)}")
