"""Dotted overrides on the command line (`harness run|validate CONFIG key.path=value ...`):
YAML-typed values, checked like the file, errors naming the override, recorded by the run."""

from __future__ import annotations

import json

import pytest
import yaml

from harness.cli import main
from harness.config import load_config
from tests.conftest import tiny_config, write_config


@pytest.fixture
def experiment(tmp_path):
    cfg = tiny_config(tmp_path, grid={"methods": ["equal"], "seeds": [0, 1]})
    return write_config(tmp_path, cfg)


def errors(capsys, *argv: str) -> list[str]:
    """The stderr lines of a refused command (exit 2), each checked to be one error line."""
    assert main(list(argv)) == 2
    # `harness run` says what it does while it starts ("harness: reading ... ..."): notes
    lines = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if not (line.startswith("harness: ") and line.endswith(" ..."))
    ]
    assert lines and all(line.startswith("harness: error: ") for line in lines), lines
    return [line.removeprefix("harness: error: ") for line in lines]


def test_validate_applies_overrides(experiment, capsys):
    args = ["train.epochs=1", "grid.seeds=[0,1,2]", "grid.methods=[equal,upgrad]"]
    assert main(["validate", str(experiment), *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{experiment} {' '.join(args)}: ok (6 trials: 2 methods x ")
    assert "3 seeds" in out and "1 epoch)" in out
    # options may come before or after them
    assert main(["validate", str(experiment), "--address", "10.0.0.1:6379", "train.epochs=3"]) == 0
    assert "3 epochs)" in capsys.readouterr().out


def test_values_are_yaml_typed(experiment):
    cfg = load_config(
        experiment,
        [
            "train.epochs=1",  # int
            "train.lr=1e-3",  # float, as the harness's YAML reader reads the file
            "grid.seeds=[0,1,2]",  # list
            "grid.methods=[equal,upgrad]",
            "method_params.upgrad.update_every=10",  # new nested keys
            "train.optimizer=sgd",  # string
            "data.hflip=true",  # boolean
            "grid.sweep.train.momentum=[0.5,0.9]",  # a sweep's key is dotted itself
            "train.epochs=2",  # a later override wins
        ],
    )
    assert cfg.train.epochs == 2 and cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.grid.seeds == [0, 1, 2] and cfg.grid.methods == ["equal", "upgrad"]
    assert cfg.method_params == {"upgrad": {"update_every": 10}}
    assert cfg.train.optimizer == "sgd" and cfg.data.hflip is True
    assert cfg.grid.sweep == {"train.momentum": [0.5, 0.9]}
    # --name comes last; an override of a key the file lacks creates the section
    named = load_config(experiment, ["name=other", "tuning=null"], name="cli")
    assert named.name == "cli" and named.tuning is None


def test_bad_value_and_bad_key_name_the_override(experiment, capsys):
    assert errors(capsys, "validate", str(experiment), "train.epochs=zero") == [
        "override train.epochs=zero: train.epochs: must be a valid integer, not 'zero'"
    ]
    assert errors(capsys, "validate", str(experiment), "train.epochs=0") == [
        "override train.epochs=0: train.epochs: must be greater than or equal to 1, not 0"
    ]
    assert errors(capsys, "run", str(experiment), "train.epochz=1") == [
        "override train.epochz=1: train.epochz: unknown key (did you mean 'epochs'?)"
    ]
    assert errors(capsys, "validate", str(experiment), "trian.epochs=1") == [
        "override trian.epochs=1: trian: unknown key (did you mean 'train'?)"
    ]
    assert errors(capsys, "validate", str(experiment), "grid.methods=[equal,pcgard]")[0].startswith(
        "override grid.methods=[equal,pcgard]: grid.methods[1]: unknown method 'pcgard'"
    )
    assert errors(capsys, "validate", str(experiment), "grid.seeds=[0,1") == [
        "override grid.seeds=[0,1: the value is not valid YAML (expected ',' or ']', but got "
        "'<stream end>')"
    ]
    assert errors(capsys, "validate", str(experiment), "grid.seeds.0=1") == [
        "override grid.seeds.0=1: grid.seeds is a list, not a mapping; give it whole "
        "(grid.seeds=[...])"
    ]
    # a problem of another key that only the overrides cause names them all
    assert errors(capsys, "validate", str(experiment), "data.num_samples=30", "train.lr=0.1")[
        0
    ].startswith("with overrides data.num_samples=30 train.lr=0.1: train.batch_size: one batch")


def test_override_without_a_key_or_equals_is_a_usage_error(experiment, capsys):
    usage = "give KEY=VALUE with a dotted key, e.g. train.epochs=1 or grid.seeds=[0,1]"
    assert errors(capsys, "run", str(experiment), "train.epochs") == [
        f"override 'train.epochs': no '=': {usage}"
    ]
    assert errors(capsys, "validate", str(experiment), "=1") == [
        f"override '=1': the key is empty: {usage}"
    ]
    assert errors(capsys, "validate", str(experiment), "train..epochs=1") == [
        f"override 'train..epochs=1': 'train..epochs' has an empty part: {usage}"
    ]


@pytest.mark.timeout(300)
def test_run_records_overrides(ray_session, experiment, tmp_path, capsys):
    """A real one-trial run: config.yaml holds the overridden values, the manifest the
    overrides as given; a resume with other overrides is refused like a changed file."""
    given = ["train.epochs=1", "grid.seeds=[0]"]
    assert main(["run", str(experiment), *given]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1 and config["grid"]["seeds"] == [0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["overrides"] == given and manifest["finished_at"]
    assert list(manifest["trials"]) == ["equal-simple_cnn-s0"]
    capsys.readouterr()

    assert errors(
        capsys, "run", str(experiment), "train.epochs=2", "grid.seeds=[0]", "--resume"
    ) == [
        f"--resume: the experiment differs from {run_dir / 'config.yaml'} at train.epochs; use "
        "--overwrite or another --name"
    ]
    # the same overrides (here after the option) resume it: every trial ended, nothing to train
    assert main(["run", str(experiment), "--resume", *given]) == 0
    assert json.loads((run_dir / "manifest.json").read_text())["overrides"] == given
