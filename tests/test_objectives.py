"""Accuracy under a budget, without Ray: parsing --objective/--constraint, the Pareto front against a brute-force
recomputation, the cost measurement and its cache, the searcher's history and its save/restore, bad input lines."""

import itertools
import math
import random

import pytest

from trainables.errors import UserError
from tuner.objectives import (Constraint, Objective, check_settings, feasible, most_accurate_feasible,
                              parse_constraints, parse_objectives, pareto_front)
from tuner.run import EXIT_USER_ERROR, main


def test_objectives_parse_with_directions_and_accuracy_first():
    assert parse_objectives("latency_ms, val_top1") == (Objective("val_top1"), Objective("latency_ms"))
    assert [o.mode for o in parse_objectives("val_top1,images_per_s,model_mb")] == ["max", "max", "min"]
    assert parse_objectives(None) == ()


@pytest.mark.parametrize("text,needle", [
    ("val_top1,speed", "unknown objective 'speed'; choose from: val_top1, params_m, model_mb, latency_ms"),
    ("latency_ms", "the objectives must include val_top1"),
    ("val_top1,latency_ms,latency_ms", "named twice"),
])
def test_bad_objectives(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_objectives(text)


def test_constraints_parse_and_judge():
    (latency, top1) = parse_constraints(["latency_ms<=5", "val_top1 >= 90"])
    assert (latency.metric, latency.op, latency.bound, latency.known_before_training) == ("latency_ms", "<=", 5, True)
    assert latency.allows(5.0) and not latency.allows(5.1) and latency.violation(7) == 2
    assert top1.allows(91) and not top1.known_before_training and top1.violation(80) == 10
    assert not latency.allows(math.nan)


@pytest.mark.parametrize("text,needle", [
    ("speed<=5", "unknown metric 'speed'; constraints take: val_top1, params_m"),
    ("latency_ms<5", "use <= or >="),
    ("latency_ms=<5", "write METRIC<=VALUE"),
    ("latency_ms<=fast", "write METRIC<=VALUE"),
])
def test_bad_constraints(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_constraints([text])


def _brute_front(rows, objectives, constraints):
    """Every pair compared, in the objectives' own directions: the definition, written out."""
    pool = [r for r in rows if r["status"] in ("finished", "stopped") and feasible(r, constraints)]
    key = {"val_top1": "best_val_top1"}

    def better_or_equal(a, b, o):
        col = key.get(o.name, f"cost_{o.name}")
        return a[col] >= b[col] if o.mode == "max" else a[col] <= b[col]

    def strictly(a, b, o):
        col = key.get(o.name, f"cost_{o.name}")
        return a[col] > b[col] if o.mode == "max" else a[col] < b[col]

    return {a["trial_id"] for a in pool if not any(
        all(better_or_equal(b, a, o) for o in objectives) and any(strictly(b, a, o) for o in objectives)
        for b in pool if b is not a)}


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_equals_brute_force(seed):
    rng = random.Random(seed)
    rows = [{"trial_id": f"t{i}", "status": rng.choice(["finished", "finished", "stopped", "infeasible", "failed"]),
             "best_val_top1": float(rng.randint(0, 20)), "cost_latency_ms": float(rng.randint(1, 10)),
             "cost_images_per_s": float(rng.randint(1, 5)), "cost_model_mb": rng.random() * 20}
            for i in range(rng.randint(1, 40))]
    for objectives, constraints in itertools.product(
            [parse_objectives("val_top1,latency_ms"), parse_objectives("val_top1,latency_ms,images_per_s")],
            [(), parse_constraints(["model_mb<=10"]), parse_constraints(["latency_ms<=6", "val_top1>=5"])]):
        assert pareto_front(rows, objectives, constraints) == _brute_front(rows, objectives, constraints)


def test_front_keeps_ties_and_skips_infeasible():
    rows = [{"trial_id": "a", "status": "finished", "best_val_top1": 90.0, "cost_latency_ms": 2.0},
            {"trial_id": "b", "status": "finished", "best_val_top1": 90.0, "cost_latency_ms": 2.0},
            {"trial_id": "c", "status": "finished", "best_val_top1": 95.0, "cost_latency_ms": 9.0},
            {"trial_id": "d", "status": "finished", "best_val_top1": 80.0, "cost_latency_ms": 3.0}]
    objectives = parse_objectives("val_top1,latency_ms")
    assert pareto_front(rows, objectives) == {"a", "b", "c"}
    budget = parse_constraints(["latency_ms<=5"])
    assert pareto_front(rows, objectives, budget) == {"a", "b"}
    assert most_accurate_feasible(rows, budget)["trial_id"] in ("a", "b")
    assert most_accurate_feasible(rows, ())["trial_id"] == "c"


def test_settings_checked():
    with pytest.raises(UserError, match="--cost-runtime tensorrt: choose one of eager, torchscript, onnxruntime"):
        check_settings("tensorrt", "cpu", 1, 8)
    with pytest.raises(UserError, match="--cost-device tpu"):
        check_settings("eager", "tpu", 1, 8)


def _space(tmp_path, extra=""):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\ndescription: tiny\ndataset: digits\nfixed: {batch_size: 32, image_size: 16}\n"
                    "params:\n  model: {choice: [cnn_basic]}\n  width: {choice: [0.25, 0.5]}\n"
                    "  lr: {loguniform: [1.0e-3, 1.0e-2]}\n" + extra)
    return path


def test_space_file_objectives_and_constraints(tmp_path):
    from tuner.space_files import load_space_file, space_from_dict, space_to_dict

    space = load_space_file(_space(tmp_path, "objectives: val_top1,model_mb\nconstraints: [model_mb<=3]\n"))
    assert space.objectives == ("val_top1", "model_mb") and space.constraints == ("model_mb<=3",)
    again = space_from_dict(space_to_dict(space), "sweep.json")
    assert (again.objectives, again.constraints) == (space.objectives, space.constraints)
    with pytest.raises(UserError, match=r"tiny.yaml:\d+: objectives: .*unknown objective 'speed'"):
        load_space_file(_space(tmp_path, "objectives: [val_top1, speed]\n"))


@pytest.mark.parametrize("args,needle", [
    (["--objective", "val_top1,speed"], "error: --objective: unknown objective 'speed'"),
    (["--constraint", "joules<=5"], "error: --constraint joules<=5: unknown metric 'joules'"),
    (["--objective", "val_top1,latency_ms", "--cost-runtime", "tvm"], "error: --cost-runtime tvm"),
    (["--objective", "val_top1,latency_ms", "--sampler", "cmaes"], "error: --sampler cmaes: choose tpe or nsga2"),
])
def test_bad_input_is_one_line(capsys, tmp_path, args, needle):
    code = main(["--space", "efficiency", "--dataset", "digits", "--storage", str(tmp_path / "sweeps"),
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args])
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    assert code == EXIT_USER_ERROR and needle in text and "Traceback" not in text
    assert len(text.splitlines()) == 1 and not (tmp_path / "sweeps").exists()


def test_costs_measured_once_per_footprint_and_cached(tmp_path, monkeypatch):
    from rich.console import Console

    from tuner import costs
    from tuner.spec import build_spec

    monkeypatch.setenv("SWEEPS_DATA_CACHE", str(tmp_path / "cache"))
    spec = build_spec(space=str(_space(tmp_path)), constraint=["params_m<=0.05"], cost_batch=4)
    configs = costs.cost_configs(spec)
    assert sorted(c["width"] for c in configs) == [0.25, 0.5]  # one per footprint, lr plays no part
    console = Console(record=True, width=200)
    book = costs.resolve_costs(spec, 10, 32, console, remote=False)
    first = dict(book.costs)
    for measured in first.values():
        assert measured["params_m"] > 0 and measured["latency_ms"] > 0 and measured["images_per_s"] > 0
        assert measured["model_mb"] == pytest.approx(measured["params_m"] * 1e6 * 4 / 2 ** 20, rel=0.05)
        assert len(measured["latency_rounds_ms"]) == costs.COST_ROUNDS and measured["latency_spread_pct"] >= 0
    assert "0 known from before" in console.export_text()
    assert [book.trainable(c) for c in sorted(configs, key=lambda c: c["width"])] == [True, False]
    again = costs.resolve_costs(spec, 10, 32, console, remote=False)  # from the cache: the same figures
    assert again.costs == first and "2 known from before" in console.export_text()
    other = build_spec(space=str(_space(tmp_path)), constraint=["params_m<=0.05"], cost_batch=4, cost_threads=2)
    assert costs.cache_key(configs[0], 10, 32, costs.cost_settings(other)) != \
        costs.cache_key(configs[0], 10, 32, costs.cost_settings(spec))  # keyed by threads (and runtime, device...)
    tight = build_spec(space=str(_space(tmp_path)), constraint=["params_m<=0.001"], cost_batch=4)
    with pytest.raises(UserError, match=r"no footprint the space samples meets params_m<=0.001: the cheapest, "
                                        r"cnn_basic, width 0.25, 16 px, measures params_m 0.0"):
        costs.resolve_costs(tight, 10, 32, console, remote=False)


@pytest.mark.slow
def test_searcher_history_and_restore_keep_every_objective(tmp_path):
    from ray import tune

    from tuner.mo_search import MultiObjectiveSearch, history_of

    objectives, constraints = parse_objectives("val_top1,latency_ms"), parse_constraints(["latency_ms<=5"])
    rows = [{"trial_id": "a", "status": "finished", "best_val_top1": 80.0, "cost_latency_ms": 2.0, "lr": 0.01},
            {"trial_id": "b", "status": "infeasible", "best_val_top1": math.nan, "cost_latency_ms": 9.0, "lr": 0.02}]
    history = history_of(rows, objectives, constraints)
    assert history == [([80.0, 2.0], [-3.0]), ([0.0, 9.0], [4.0])]
    searcher = MultiObjectiveSearch(objectives, constraints, points=[{"lr": r["lr"]} for r in rows], history=history)
    searcher.set_search_properties("val_top1", "max", {"lr": tune.loguniform(1e-3, 1e-1)})
    study = searcher._ot_study  # noqa: SLF001 - Ray's own attribute: the study the sampler learns from
    assert len(study.directions) == 2 and [t.values for t in study.trials] == [[80.0, 2.0], [0.0, 9.0]]
    assert [t.constraints for t in study.trials] == [{"latency_ms<=5": -3.0}, {"latency_ms<=5": 4.0}]
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"val_top1": 70.0, "cost_latency_ms": 6.0})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = MultiObjectiveSearch(objectives, constraints)
    restored.restore(str(tmp_path / "searcher.pkl"))
    last = restored._ot_study.trials[-1]  # noqa: SLF001
    assert len(restored._ot_study.directions) == 2 and last.values == [70.0, 6.0]  # noqa: SLF001
    assert last.constraints == {"latency_ms<=5": 1.0}


@pytest.mark.parametrize("runtime", ["torchscript", "onnxruntime"])
def test_costs_through_the_export_runtimes(runtime):
    """--cost-runtime uses tuner.export's runtime builders: the same footprint measures through each."""
    from tuner.costs import CostSettings, measure_footprint

    measured = measure_footprint({"model": "cnn_basic", "width": 0.25, "image_size": 16}, 10, 16,
                                 CostSettings(runtime=runtime, batch=4, rounds=2, iterations=3))
    assert measured["latency_ms"] > 0 and measured["images_per_s"] > 0 and measured["params_m"] > 0


def test_asha_prunes_on_accuracy_while_the_searcher_keeps_every_objective():
    """Tune's metric (ASHA's, the checkpoints') is val_top1; the searcher Tune hands it to keeps its list."""
    from ray.tune.schedulers import ASHAScheduler

    from tuner.experiment import make_searcher, tune_config
    from tuner.mo_search import MultiObjectiveSearch
    from tuner.spec import build_spec

    spec = build_spec(space="efficiency", dataset="digits")
    searcher = make_searcher(spec)
    config = tune_config(spec, 4, searcher)
    assert isinstance(searcher, MultiObjectiveSearch) and isinstance(config.scheduler, ASHAScheduler)
    assert (config.metric, config.mode) == ("val_top1", "max")
    searcher.set_search_properties(config.metric, config.mode, spec.param_space())
    assert searcher.metric == ["val_top1", "cost_latency_ms"]
    assert [d.name for d in searcher._ot_study.directions] == ["MAXIMIZE", "MINIMIZE"]  # noqa: SLF001
    assert "width" in searcher.suggest("t1")
