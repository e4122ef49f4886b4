"""Search spaces from YAML, TOML and Python files: loaded into the same SearchSpace as a built-in one, every mistake
one line naming the file, the line, the key and what is allowed, and every built-in space round-tripped."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from ray.tune.search.sample import Categorical, Domain, Float, Integer, LogUniform

from search_spaces import SPACES
from search_spaces.base import Asha, SearchSpace
from trainables.config import TrialConfig
from trainables.errors import UserError
from tuner.space_files import (DISTRIBUTIONS, SPACE_FILE_SUFFIXES, find_space_files, is_space_path, load_space_file,
                               space_digest, space_from_dict, space_to_dict)

YAML = """\
name: my_lr_sweep
description: AdamW lr and weight decay for a small CNN
dataset: digits
fixed: {model: cnn_basic, width: 0.25, opt: adamw, sched: cosine}
params:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  weight_decay: {loguniform: [1.0e-5, 1.0e-1]}
  batch_size: {choice: [32, 64]}
search: optuna
num_samples: 8
max_epochs: 4
asha: {grace_period: 1, reduction_factor: 2}
"""

TOML = """\
name = "my_lr_sweep"
description = "AdamW lr and weight decay for a small CNN"
dataset = "digits"
search = "optuna"
num_samples = 8
max_epochs = 4

[fixed]
model = "cnn_basic"
width = 0.25
opt = "adamw"
sched = "cosine"

[params]
lr = {loguniform = [1.0e-4, 1.0e-2]}
weight_decay = {loguniform = [1.0e-5, 1.0e-1]}
batch_size = {choice = [32, 64]}

[asha]
grace_period = 1
reduction_factor = 2
"""

PY = """\
from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="my_lr_sweep",
    description="AdamW lr and weight decay for a small CNN",
    reproduces="",
    dataset="digits",
    fixed={"model": "cnn_basic", "width": 0.25, "opt": "adamw", "sched": "cosine"},
    params={"lr": tune.loguniform(1e-4, 1e-2), "weight_decay": tune.loguniform(1e-5, 1e-1),
            "batch_size": tune.choice([32, 64])},
    num_samples=8,
    max_epochs=4,
    asha=Asha(grace_period=1, reduction_factor=2),
)
"""

KNOWN_KEYS = ", ".join(TrialConfig.keys())
ALL_DISTRIBUTIONS = ", ".join(DISTRIBUTIONS)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path) -> str:
    with pytest.raises(UserError) as caught:
        load_space_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def check_example(space: SearchSpace) -> None:
    assert (space.name, space.dataset, space.search, space.num_samples, space.max_epochs) == \
        ("my_lr_sweep", "digits", "optuna", 8, 4)
    assert space.description == "AdamW lr and weight decay for a small CNN" and space.reproduces == ""
    assert space.fixed == {"model": "cnn_basic", "width": 0.25, "opt": "adamw", "sched": "cosine"}
    assert space.asha == Asha(grace_period=1, reduction_factor=2) and space.then is None
    lr, wd, batch = space.params["lr"], space.params["weight_decay"], space.params["batch_size"]
    assert isinstance(lr, Float) and isinstance(lr.get_sampler(), LogUniform) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(batch, Categorical) and batch.categories == [32, 64]
    for seed in range(200):  # domains sample within their bounds, and every draw is a valid trial config
        drawn = {"lr": lr.sample(random_state=seed), "weight_decay": wd.sample(random_state=seed),
                 "batch_size": batch.sample(random_state=seed)}
        assert 1e-4 <= drawn["lr"] <= 1e-2 and 1e-5 <= drawn["weight_decay"] <= 1e-1 and drawn["batch_size"] in (32, 64)
        TrialConfig.from_dict({**space.fixed, **drawn})


def test_yaml_toml_and_python_files_load_into_the_same_space(tmp_path):
    spaces = [load_space_file(write(tmp_path, name, text))
              for name, text in (("s.yaml", YAML), ("s.toml", TOML), ("s.py", PY))]
    for space in spaces:
        check_example(space)
    assert space_to_dict(spaces[0]) == space_to_dict(spaces[1]) == space_to_dict(spaces[2])
    assert len({space_digest(s) for s in spaces}) == 1


def test_a_python_file_leaves_no_module_and_no_bytecode_behind(tmp_path):
    path = write(tmp_path, "mine.py", PY)
    load_space_file(path)
    assert not [name for name, module in list(sys.modules.items()) if getattr(module, "__file__", None) == str(path)]
    assert not any(name.startswith("space_file_") for name in sys.modules)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.py"]  # no __pycache__ beside the user's file


def test_yaml_reads_1e_4_as_a_number_and_null_asha_as_none(tmp_path):
    text = YAML.replace("[1.0e-4, 1.0e-2]", "[1e-4, 1e-2]").replace("asha: {grace_period: 1, reduction_factor: 2}",
                                                                    "asha: null")
    space = load_space_file(write(tmp_path, "s.yml", text))
    assert (space.params["lr"].lower, space.params["lr"].upper) == (1e-4, 1e-2) and space.asha is None
    no_asha = TOML.replace("[asha]\ngrace_period = 1\nreduction_factor = 2\n", "")
    toml = load_space_file(write(tmp_path, "s.toml", no_asha.replace("max_epochs = 4", "max_epochs = 4\nasha = false")))
    assert toml.asha is None  # TOML has no null: false turns ASHA off


def test_every_distribution_maps_to_its_ray_tune_function(tmp_path):
    text = YAML.replace("  batch_size: {choice: [32, 64]}\n", """\
  batch_size: {qrandint: [16, 128, 16]}
  label_smoothing: {uniform: [0.0, 0.2]}
  warmup_epochs: {quniform: [0, 2, 0.5]}
  min_lr: {qloguniform: [1.0e-6, 1.0e-4, 1.0e-6]}
  vit_depth: {randint: [2, 7]}
  vit_dim: {lograndint: [16, 256]}
  vit_mlp_dim: {qlograndint: [64, 512, 64]}
  repeat_aug: {choice: [1, 3]}
""").replace("search: optuna", "search: random") + "dataset_overrides:\n  digits:\n    hflip: {grid: [true, false]}\n"
    space = load_space_file(write(tmp_path, "all.yaml", text))
    assert {k: next(iter(v)) for k, v in space_to_dict(space)["params"].items()} == {
        "lr": "loguniform", "weight_decay": "loguniform", "batch_size": "qrandint", "label_smoothing": "uniform",
        "warmup_epochs": "quniform", "min_lr": "qloguniform", "vit_depth": "randint", "vit_dim": "lograndint",
        "vit_mlp_dim": "qlograndint", "repeat_aug": "choice"}
    assert space.dataset_overrides == {"digits": {"hflip": {"grid_search": [True, False]}}}
    for seed in range(100):
        assert space.params["batch_size"].sample(random_state=seed) in range(16, 129, 16)
        assert 2 <= space.params["vit_depth"].sample(random_state=seed) <= 6  # randint's upper is exclusive
        assert space.params["vit_mlp_dim"].sample(random_state=seed) % 64 == 0
    assert isinstance(space.params["vit_dim"], Integer)


def test_two_stage_then_in_yaml(tmp_path):
    text = YAML + textwrap.dedent("""\
        then:
          name: my_lr_sweep_stage2
          description: fine-tune the best of stage 1
          dataset: cifar10
          fixed: {opt: sgd}
          params:
            lr: {loguniform: [1.0e-5, 1.0e-3]}
          max_epochs: 2
          asha: null
          requires: {pretrained: "--set pretrained=PATH: the stage-1 checkpoint"}
        """)
    space = load_space_file(write(tmp_path, "two.yaml", text))
    stage2 = space.then
    assert isinstance(stage2, SearchSpace) and stage2.then is None
    assert (stage2.name, stage2.dataset, stage2.max_epochs, stage2.asha, stage2.fixed) == \
        ("my_lr_sweep_stage2", "cifar10", 2, None, {"opt": "sgd"})
    assert stage2.requires == {"pretrained": "--set pretrained=PATH: the stage-1 checkpoint"}
    assert stage2.params["lr"].upper == 1e-3
    nested = write(tmp_path, "three.yaml", text.replace("max_epochs: 2\n", "max_epochs: 2\n  then: {}\n"))
    assert error_of(nested) == (f"{nested}:21: then.then: a second stage cannot have a `then` of its own: a space has "
                                f"at most two stages")
    wrong = write(tmp_path, "wrong.yaml", text.replace("lr: {loguniform: [1.0e-5, 1.0e-3]}",
                                                       "lr: {loguniform: [0, 1]}"))
    assert error_of(wrong) == (f"{wrong}:19: then.params.lr: loguniform [0, 1]: lower must be > 0 on a log scale "
                               f"(loguniform: [lower, upper])")


# (what to replace in YAML, by what, the expected message with {f} for the file)
YAML_MISTAKES = {
    "unknown field": ("search: optuna", "serach: optuna",
                      "{f}:9: unknown field 'serach' (did you mean 'search'?); fields: name, description, reproduces, "
                      "dataset, fixed, params, search, metric, mode, asha, num_samples, max_epochs, dataset_overrides, "
                      "requires, folder_image_size, then, objectives, constraints"),
    "unknown key": ("{model: cnn_basic,", "{modle: cnn_basic,",
                    "{f}:4: fixed.modle: unknown config key 'modle' (did you mean 'model'?); known keys: "
                    + KNOWN_KEYS),
    "fixed out of range": ("width: 0.25", "width: 20",
                           "{f}:4: fixed.width: config key 'width' got 20.0; it must lie in [0.05, 8.0]"),
    "fixed not a choice": ("opt: adamw", "opt: adamx",
                           "{f}:4: fixed.opt: config key 'opt' got 'adamx'; allowed values: sgd, adamw, lamb"),
    "fixed wrong type": ("sched: cosine}", "sched: cosine, batch_size: big}",
                         "{f}:4: fixed.batch_size: config key 'batch_size' needs an int, got 'big' (training batch "
                         "size)"),
    "fixed distribution": ("sched: cosine}", "sched: cosine, lr: {choice: [1, 2]}}",
                           "{f}:4: fixed.lr: config key 'lr' takes one plain value (a number, a string or true/false), "
                           "got a dict {'choice': [1, 2]}; a distribution belongs under params"),
    "loguniform from 0": ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {loguniform: [0, 1]}",
                          "{f}:6: params.lr: loguniform [0, 1]: lower must be > 0 on a log scale (loguniform: "
                          "[lower, upper])"),
    "uniform reversed": ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {uniform: [1, 0]}",
                         "{f}:6: params.lr: uniform [1, 0]: lower must be < upper (uniform: [lower, upper])"),
    "wrong arity": ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {loguniform: [1.0e-4]}",
                    "{f}:6: params.lr: loguniform takes 2 numbers (loguniform: [lower, upper]), got a list [0.0001]"),
    "not numbers": ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {loguniform: [a, b]}",
                    "{f}:6: params.lr: loguniform ['a', 'b']: every argument must be a number (loguniform: "
                    "[lower, upper])"),
    "bound outside the key's range": ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {loguniform: [1.0e-4, 20]}",
                                      "{f}:6: params.lr: loguniform [0.0001, 20]: reaches 20, and config key 'lr' got "
                                      "20.0; it must lie in [1e-08, 10.0] (loguniform: [lower, upper])"),
    "quantized reach outside": ("batch_size: {choice: [32, 64]}", "repeat_aug: {qrandint: [1, 20, 3]}",
                                "{f}:8: params.repeat_aug: qrandint [1, 20, 3]: reaches 18, and config key "
                                "'repeat_aug' got 18; it must lie in [1, 16] (qrandint: [lower, upper, q])"),
    "unknown distribution": ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {logunifrom: [1.0e-4, 1.0e-2]}",
                             "{f}:6: params.lr: unknown distribution 'logunifrom' (did you mean 'loguniform'?); "
                             "distributions: " + ALL_DISTRIBUTIONS),
    "float distribution of an int key": ("batch_size: {choice: [32, 64]}", "batch_size: {uniform: [32, 64]}",
                                         "{f}:8: params.batch_size: config key 'batch_size' takes an int: search it "
                                         "with randint, qrandint, lograndint, qlograndint, choice, grid, not uniform"),
    "plain value under params": ("batch_size: {choice: [32, 64]}", "batch_size: 32",
                                 "{f}:8: params.batch_size: a searched key takes one distribution, e.g. {loguniform: "
                                 "[1.0e-4, 1.0e-2]} or {choice: [32, 64]}; got an int 32; distributions: "
                                 + ALL_DISTRIBUTIONS + " (to hold 'batch_size' at one value, put it under fixed)"),
    "grid of a non-list": ("batch_size: {choice: [32, 64]}", "batch_size: {grid: 32}",
                           "{f}:8: params.batch_size: grid takes a non-empty list of values, e.g. grid: [32, 64]; got "
                           "an int 32"),
    "choice value out of range": ("batch_size: {choice: [32, 64]}", "batch_size: {choice: [32, 1]}",
                                  "{f}:8: params.batch_size.choice[1]: config key 'batch_size' got 1; it must lie in "
                                  "[2, 65536]"),
    "grid with optuna": ("batch_size: {choice: [32, 64]}", "batch_size: {grid: [32, 64]}",
                         "{f}:8: params.batch_size: grid enumerates its values and Optuna cannot: use search: grid or "
                         "random, or choice here"),
    "fixed and searched": ("batch_size: {choice: [32, 64]}", "opt: {choice: [sgd, adamw]}",
                           "{f}:8: params.opt: 'opt' is also under fixed (line 4); a key is fixed or searched"),
    "max_epochs above the budget": ("batch_size: {choice: [32, 64]}", "max_epochs: {choice: [2, 8]}",
                                    "{f}:8: params.max_epochs: reaches max_epochs=8, above the space's budget "
                                    "(max_epochs: 4); raise it or lower this"),
    "searched seed": ("batch_size: {choice: [32, 64]}", "seed: {choice: [1, 2]}",
                      "{f}:8: params.seed: 'seed' says where a trial came from, not how it trains: never searched "
                      "(use --set)"),
    "search": ("search: optuna", "search: bayes", "{f}:9: search: got 'bayes'; allowed: optuna, grid, random"),
    "mode": ("search: optuna", "search: optuna\nmode: maximize", "{f}:10: mode: got 'maximize'; allowed: max, min"),
    "grace_period": ("grace_period: 1", "grace_period: 0", "{f}:12: asha.grace_period: needs a whole number >= 1, "
                                                           "got 0"),
    "reduction_factor": ("reduction_factor: 2", "reduction_factor: 1",
                         "{f}:12: asha.reduction_factor: needs a whole number >= 2, got 1"),
    "asha field": ("reduction_factor: 2", "reduction: 2",
                   "{f}:12: asha: unknown field 'reduction' (did you mean 'reduction_factor'?); asha fields: "
                   "grace_period, reduction_factor"),
    "num_samples": ("num_samples: 8", "num_samples: 0", "{f}:10: num_samples: needs a whole number >= 1, got 0"),
    "max_epochs": ("max_epochs: 4", "max_epochs: 0",
                   "{f}:11: max_epochs: needs a whole number >= 1 and <= 10000, got 0"),
    "requires not a mapping": ("search: optuna", "search: optuna\nrequires: [pretrained]",
                               "{f}:10: requires: needs a mapping, e.g. {pretrained: 'give --set pretrained=hub or "
                               "=PATH'}; got a list ['pretrained']"),
    "requires not a message": ("search: optuna", "search: optuna\nrequires: {pretrained: 3}",
                               "{f}:10: requires.pretrained: needs a non-empty string, got an int 3"),
    "dataset_overrides value": ("search: optuna", "search: optuna\ndataset_overrides:\n  digits:\n    width: 20",
                                "{f}:12: dataset_overrides.digits.width: config key 'width' got 20.0; it must lie in "
                                "[0.05, 8.0]"),
    "dataset_overrides data set": ("search: optuna", "search: optuna\ndataset_overrides:\n  emnist: {width: 0.5}",
                                   "{f}:11: dataset_overrides.emnist: got 'emnist' (did you mean 'mnist'?); allowed: digits, cifar10, "
                                   "cifar100, mnist, fashionmnist, kmnist, svhn, stl10, npz, folder"),
    "missing field": ("description: AdamW lr and weight decay for a small CNN\n", "",
                      "{f}: missing required field 'description'; required: name, description, dataset, fixed, "
                      "params"),
    "fixed not a mapping": ("fixed: {model: cnn_basic, width: 0.25, opt: adamw, sched: cosine}", "fixed:",
                            "{f}:4: fixed: needs a mapping, e.g. {model: cnn_basic}; got nothing"),
    "syntax": ("search: optuna", "search: [optuna", "{f}:10: not valid YAML: expected ',' or ']', but got ':'"),
    "duplicate key": ("num_samples: 8", "num_samples: 8\nnum_samples: 9",
                      "{f}:11: num_samples: duplicate key (first at line 10); give each key once"),
    "name": ("name: my_lr_sweep", "name: my sweep/x",
             "{f}:1: name: got 'my sweep/x'; a space name is letters, digits and . _ -, starting with a letter or "
             "digit, at most 100 characters (it names sweep folders and models)"),
    "metric": ("search: optuna", "search: optuna\nmetric: accuracy",
               "{f}:10: metric: got 'accuracy'; allowed: train_loss, val_loss, val_top1, val_top5, best_val_top1, lr, "
               "images_per_s, epoch_s"),
    "loss maximised": ("search: optuna", "search: optuna\nmetric: val_loss",
                       "{f}:10: metric: val_loss is best at its minimum: give mode: min, not max"),
}


@pytest.mark.parametrize("case", sorted(YAML_MISTAKES))
def test_each_yaml_mistake_is_one_line_naming_file_line_key_and_what_is_allowed(tmp_path, case):
    old, new, expected = YAML_MISTAKES[case]
    assert old in YAML
    path = write(tmp_path, "bad.yaml", YAML.replace(old, new, 1))
    assert error_of(path) == expected.replace("{f}", str(path))


@pytest.mark.parametrize("name,text,expected", [
    ("empty.yaml", "# nothing yet\n", "{f}: the file is empty; a space file is a mapping of the fields name, "
                                      "description, dataset, fixed, params (and optionally reproduces, search, metric, "
                                      "mode, asha, num_samples, max_epochs, dataset_overrides, requires, "
                                      "folder_image_size, then, objectives, constraints)"),
    ("list.yaml", "- a\n- b\n", "{f}: the top level must be a mapping of fields (name, description, dataset, fixed, "
                                "params, ...), got a list ['a', 'b']"),
    ("syntax.toml", TOML.replace('dataset = "digits"', "dataset = digits"),
     "{f}:3: not valid TOML: Invalid value, column 11"),
    ("bad.toml", TOML.replace("lr = {loguniform = [1.0e-4, 1.0e-2]}", "lr = {loguniform = [0, 1]}"),
     "{f}:15: params.lr: loguniform [0, 1]: lower must be > 0 on a log scale (loguniform: [lower, upper])"),
    ("range.toml", TOML.replace("width = 0.25", "width = 20"),
     "{f}:10: fixed.width: config key 'width' got 20.0; it must lie in [0.05, 8.0]"),
    ("empty.toml", "", "{f}: the file is empty; a space file is a mapping of the fields name, description, dataset, "
                       "fixed, params (and optionally reproduces, search, metric, mode, asha, num_samples, max_epochs, "
                       "dataset_overrides, requires, folder_image_size, then, objectives, constraints)"),
    ("nospace.py", "from ray import tune\nspace = 1\n",
     "{f}: defines no SPACE; a Python space file sets SPACE = SearchSpace(...) (from search_spaces.base import "
     "SearchSpace, Asha)"),
    ("notspace.py", "SPACE = {'name': 'x'}\n",
     "{f}: SPACE is a dict {'name': 'x'}; a Python space file sets SPACE = SearchSpace(...) (from search_spaces.base "
     "import SearchSpace, Asha)"),
    ("raises.py", "import math\n\nSPACE = 1 / 0\n", "{f}:3: importing it raised ZeroDivisionError: division by zero"),
    ("syntax.py", "SPACE = (\n", "{f}:1: importing it raised SyntaxError: '(' was never closed"),
    ("function.py", PY.replace('"batch_size": tune.choice([32, 64])', '"batch_size": tune.sample_from(lambda c: 32)'),
     "{f}: params.batch_size: tune.sample_from(...) cannot be written to a space file; use one of "
     + ALL_DISTRIBUTIONS),
    ("badasha.py", PY.replace("grace_period=1", "grace_period=0"),
     "{f}: asha.grace_period: needs a whole number >= 1, got 0"),
    ("unknown.txt", "name: x\n", "{f}: not a space file; a space file ends in .yaml, .yml, .toml, .py"),
])
def test_malformed_files(tmp_path, name, text, expected):
    path = write(tmp_path, name, text)
    assert error_of(path) == expected.replace("{f}", str(path))


def test_a_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such space file"


def sample_all(space: SearchSpace, seed: int) -> list[dict]:
    """The same draws from each layer of a space (its params, each data set's adjustments, its second stage)."""
    layers = [space.params, *space.dataset_overrides.values()]
    out = [{k: v.sample(random_state=seed + i) if isinstance(v, Domain) else v
            for i, (k, v) in enumerate(layer.items())} for layer in layers]
    return out + (sample_all(space.then, seed) if space.then is not None else [])


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_built_in_space_round_trips(name):
    space = SPACES[name]
    data = space_to_dict(space)
    again = space_from_dict(json.loads(json.dumps(data)), "sweep.json")  # as sweep.json keeps it
    assert space_to_dict(again) == data and space_digest(again) == space_digest(space)
    for seed in (0, 1, 7):
        assert sample_all(again, seed) == sample_all(space, seed)
    assert (again.name, again.search, again.asha, again.requires, again.folder_image_size) == \
        (space.name, space.search, space.asha, space.requires, space.folder_image_size)


def test_space_to_dict_names_a_domain_it_cannot_write():
    from dataclasses import replace

    from ray import tune

    space = replace(SPACES["resnet_rsb"], params={"lr": tune.randn(0.0, 1.0)})
    with pytest.raises(UserError, match=r"^space 'resnet_rsb': params.lr: a Float domain with a Normal sampler"):
        space_to_dict(space)


def test_space_digest_is_stable_and_tells_a_changed_file(tmp_path):
    path = write(tmp_path, "s.yaml", YAML)
    first = space_digest(load_space_file(path))
    assert first == space_digest(load_space_file(path)) and len(first) == 64
    path.write_text(YAML.replace("num_samples: 8", "num_samples: 9"))
    assert space_digest(load_space_file(path)) != first


def test_find_space_files(tmp_path):
    for name in ("b.toml", "a.yaml", "c.py", "d.yml", ".hidden.yaml", "notes.txt", "__init__.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub.yaml").mkdir()
    assert [p.name for p in find_space_files(tmp_path)] == ["a.yaml", "b.toml", "c.py", "d.yml"]
    assert find_space_files(tmp_path / "missing") == []


@pytest.mark.parametrize("value,expected", [("resnet_rsb", False), ("my.yaml", True), ("x.YML", True),
                                            ("s.toml", True), ("s.py", True), ("spaces/mine", True),
                                            ("cnn_grid", False)])
def test_is_space_path(value, expected):
    assert is_space_path(value) is expected
    assert SPACE_FILE_SUFFIXES == (".yaml", ".yml", ".toml", ".py")


def test_a_dataset_is_named_in_any_case_as_with_dataset(tmp_path):
    """`dataset: MNIST` as `--dataset MNIST` takes it (torchvision's spelling), in the data set's adjustments too."""
    text = YAML.replace("dataset: digits", "dataset: MNIST") + "dataset_overrides: {FashionMNIST: {width: 0.5}}\n"
    space = load_space_file(write(tmp_path, "upper.yaml", text))
    assert space.dataset == "mnist" and space.dataset_overrides == {"fashionmnist": {"width": 0.5}}
    wrong = write(tmp_path, "wrong.yaml", YAML.replace("dataset: digits", "dataset: MNISTT"))
    assert error_of(wrong).startswith(f"{wrong}:3: dataset: got 'mnistt' (did you mean 'mnist'?); allowed: digits")


MODELS_LINE = ("unknown model '{model}'; choose one of: cnn_basic, deit_tiny, efficientnet_b0, mobilenetv3, resnet18, "
               "resnet18_imagenet, resnet34, resnet34_imagenet, resnet50, resnet50_imagenet, swin_t, vgg16_bn, vit_b, "
               "vit_s, vit_scratch, timm/<name>, module:factory (your own: --set model=package.module:factory)")


@pytest.mark.parametrize("old,new,expected", [
    ("{model: cnn_basic,", "{model: cnn_basc,",
     "{f}:4: fixed.model: " + MODELS_LINE.format(model="cnn_basc") + " (did you mean 'cnn_basic'?)"),
    ("{model: cnn_basic,", "{model: timm/not_a_timm_net,",
     "{f}:4: fixed.model: timm has no model 'not_a_timm_net'; list them with python -c \"import timm; "
     "print(timm.list_models('*not_*'))\""),
    ("{model: cnn_basic,", "{model: 'my-nets:build',",
     "{f}:4: fixed.model: model 'my-nets:build': write package.module:factory, e.g. mypkg.nets:build"),
    ("  batch_size: {choice: [32, 64]}", "  model: {choice: [cnn_basic, vgg16bn]}",
     "{f}:8: params.model.choice[1]: " + MODELS_LINE.format(model="vgg16bn") + " (did you mean 'vgg16_bn'?)"),
])
def test_a_wrong_model_is_refused_at_load_naming_file_line_and_key(tmp_path, old, new, expected):
    """Before any data loads (it used to wait for preflight, and named neither the file nor the line)."""
    text = YAML.replace(old, new, 1)
    if "params.model" in expected:
        text = text.replace("model: cnn_basic, ", "")
    path = write(tmp_path, "model.yaml", text)
    assert error_of(path) == expected.replace("{f}", str(path))


@pytest.mark.parametrize("model", ["cnn_basic", "timm/resnet18", "timm/resnet18.a1_in1k", "mypkg.nets:build"])
def test_a_good_model_loads_and_a_user_model_is_not_imported_yet(tmp_path, model):
    space = load_space_file(write(tmp_path, "ok.yaml", YAML.replace("model: cnn_basic", f"model: '{model}'")))
    assert space.fixed["model"] == model and "mypkg" not in sys.modules


def test_set_model_is_checked_when_parsed():
    from trainables.config import parse_value

    with pytest.raises(UserError, match=r"^unknown model 'cnn_basc'; choose one of: cnn_basic, .*did you mean "
                                        r"'cnn_basic'\?\)$"):
        parse_value("model", "cnn_basc")
    assert parse_value("model", "mypkg.nets:build") == "mypkg.nets:build"
