"""The experiment schema: good files pass, every bad key is named in one line."""

from __future__ import annotations

import pytest

import methods
from harness.config import ConfigError, load_config, parse_config
from tests.conftest import REPO, tiny_config, write_config


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=str)
def test_shipped_experiments_validate(path):
    cfg = load_config(path)
    assert cfg.trial_count >= 4


def test_all_methods_experiment_lists_every_registered_method():
    cfg = load_config(REPO / "experiments" / "all_methods.yaml")
    assert sorted({cfg.weighting_method(m)[0] for m in cfg.grid.methods}) == methods.available()
    assert cfg.weighting_method("mgda_ub") == ("mgda", {"level": "representation"})


def test_defaults_and_float_forms(tmp_path):
    cfg = tiny_config(tmp_path, train={"lr": "ignored"})
    path = tmp_path / "e.yaml"
    # YAML 1.1 reads 1e-3 as a string; the harness reads it as a number
    path.write_text(write_config(tmp_path, cfg).read_text().replace("lr: ignored", "lr: 1e-3"))
    loaded = load_config(path)
    assert loaded.train.lr == pytest.approx(1e-3)
    assert loaded.resources.gpus_per_worker == "auto"
    assert loaded.data.task_names()[0] == "Atelectasis"
    assert len(loaded.data.task_names()) == 14


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.lines


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"grid": {"methods": ["equal", "deepchest", "pcgard"]}},
            "grid.methods[2]: unknown method 'pcgard' (did you mean 'pcgrad'?); available: "
            + ", ".join(methods.available()),
        ),
        ({"grid": {"backbones": ["resnet19"]}}, "grid.backbones[0]: unknown backbone 'resnet19'"),
        ({"grid": {"seeds": [0, 0]}}, "grid.seeds[1]: duplicate seed 0"),
        ({"grid": {"seeds": []}}, "grid.seeds: must have at least 1 item, not 0"),
        ({"train": {"epochs": 0}}, "train.epochs: must be greater than or equal to 1"),
        ({"train": {"epochs": "4"}}, "train.epochs: must be a valid integer"),
        ({"train": {"optimiser": "adam"}}, "train.optimiser: unknown key"),
        ({"train": {"loader_workers": 2}}, "train.loader_workers: unknown key (removed: images"),
        ({"train": {"amp": "yes"}}, "train.amp: must be 'auto', 'bf16', 'fp16' or 'off'"),
        ({"data": {"dataset": "mnist"}}, "data.dataset: must be 'synthetic'"),
        ({"data": {"image_size": 0}}, "data.image_size: must be greater than or equal"),
        ({"data": {"image_size": 100000}}, "data.image_size: must be less than or equal"),
        ({"data": {"tasks": ["Mass", "Mass"]}}, "data.tasks[1]: duplicate task 'Mass'"),
        ({"data": {"tasks": ["Mass", "Tumour"]}}, "data.tasks[1]: unknown task 'Tumour'"),
        ({"data": {"dataset": "nih"}}, "data.prepared: data set 'nih' trains from a prepared"),
        ({"data": {"dataset": "chestmnist"}}, "data.root: data set 'chestmnist' needs the path"),
        (
            {"data": {"dataset": "synthetic", "prepared": "x"}},
            "data.prepared: only nih, chexpert are prepared",
        ),
        (
            {"data": {"dataset": "chexpert", "prepared": "x", "tasks": ["Effusion"]}},
            "data.tasks[0]: unknown task 'Effusion'; available: No Finding,",
        ),
        ({"data": {"augment": "sometimes"}}, "data.augment:"),
        ({"resources": {"cpus_per_worker": 0}}, "resources.cpus_per_worker: must be"),
        ({"resources": {"gpus_per_worker": "many"}}, "resources.gpus_per_worker:"),
        ({"colour": "red"}, "colour: unknown key"),
        (
            {"method_params": {"mgda": {"level": "weights"}}},
            "method_params.mgda: method 'mgda': level must be one of parameters, representation",
        ),
        ({"name": "a/b"}, "name: 'a/b' must be 1-100 letters"),
        (
            {"name": ".."},
            "name: '..' must be 1-100 letters, digits, '.', '_' or '-', starting with a",
        ),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key (did you mean 'epochs'?)"),
        ({"data": {"datset": "nih"}}, "data.datset: unknown key (did you mean 'dataset'?)"),
        ({"train": {"epochs": float("inf")}}, "train.epochs: must be a whole number, not inf"),
        ({"grid": {"seeds": [1.5]}}, "grid.seeds[0]: must be a whole number, not 1.5"),
        (
            {"method_params": {"deepchest": {"signall": "x"}}},
            "method_params.deepchest: method 'deepchest': unknown hyperparameter 'signall'",
        ),
        (
            {"method_params": {"deepchest": {"signal": "val_auroc"}}},
            "method_params.deepchest: method 'deepchest': signal must be one of",
        ),
        ({"method_params": {"gradnorm2": {}}}, "method_params.gradnorm2: unknown method"),
        (
            {"method_params": {"mgda_ub": {"method": "mgdaa"}}},
            "method_params.mgda_ub.method: unknown method 'mgdaa' (did you mean 'mgda'?); "
            "available: ",
        ),
        (
            {"method_params": {"mgda_ub": {"method": "mgda", "level": "weights"}}},
            "method_params.mgda_ub: method 'mgda': level must be one of",
        ),
        (
            {"method_params": {"mgda": {"method": "pcgrad"}}},
            "method_params.mgda.method: 'mgda' is a registered method",
        ),
        (
            {"method_params": {"a/b": {"method": "mgda"}}},
            "method_params.a/b: a variant's name must be 1-100 letters",
        ),
        (
            {"grid": {"methods": ["equal", "mgda_ub"]}},
            "grid.methods[1]: unknown method 'mgda_ub' (did you mean 'mgda'?); available: ",
        ),
    ],
)
def test_bad_keys_are_named(tmp_path, change, expected):
    lines = errors_of(tiny_config(tmp_path, **change))
    assert any(line.startswith(expected) for line in lines), lines
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize(
    "change, line",
    [
        ({"train": {"epochs": 1.5}}, "train.epochs: must be a whole number, not 1.5"),
        ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number, not nan"),
        ({"train": {"epochs": "abc"}}, "train.epochs: must be a valid integer, not 'abc'"),
        ({"grid": {"methods": "equal"}}, "grid.methods: must be a valid list, not 'equal'"),
        ({"train": {"lr": [1]}}, "train.lr: must be a valid number, not a list"),
        (
            {"train": {"amp": "y" * 80}},
            f"train.amp: must be 'auto', 'bf16', 'fp16' or 'off', not '{'y' * 56}...",
        ),
        (
            {"grid": {"sweep": {"train.epochs": [1, 2.5]}}},
            "grid.sweep.train.epochs[1]: must be a whole number, not 2.5",
        ),
    ],
)
def test_a_refused_value_is_named_once(tmp_path, change, line):
    """Pydantic's "Input should be" becomes "must be ..., not <value>", the value once, a
    long one cut to 60 characters."""
    assert errors_of(tiny_config(tmp_path, **change)) == [line]


def test_method_variants_run_a_registered_method_under_their_own_name(tmp_path):
    cfg = parse_config(
        tiny_config(
            tmp_path,
            grid={"methods": ["mgda", "mgda_ub", "deepchest_val"]},
            method_params={
                "mgda_ub": {"method": "mgda", "level": "representation"},
                "deepchest_val": {"method": "deepchest", "signal": "val_loss"},
            },
        )
    )
    assert cfg.weighting_method("mgda") == ("mgda", {})
    assert cfg.weighting_method("mgda_ub") == ("mgda", {"level": "representation"})
    assert cfg.weighting_method("deepchest_val") == ("deepchest", {"signal": "val_loss"})
    from harness.launch import trial_identities, trial_spec

    identity = next(i for i in trial_identities(cfg) if i["method"] == "mgda_ub")
    spec = trial_spec(cfg, identity, gpus=0)
    assert (spec["method"], spec["weighting_method"]) == ("mgda_ub", "mgda")
    assert spec["method_params"] == {"level": "representation"}
    assert spec["trial_id"].startswith("mgda_ub-")


def test_several_errors_each_one_line(tmp_path):
    lines = errors_of(tiny_config(tmp_path, train={"epochs": 0, "lr": -1}, extra=1))
    assert len(lines) == 3
    assert {line.split(":")[0] for line in lines} == {"train.epochs", "train.lr", "extra"}


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngrid: {methods: [equal\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+:\d+: not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_name_override(tmp_path):
    path = write_config(tmp_path, tiny_config(tmp_path))
    assert load_config(path, overrides={"name": "other"}).name == "other"
