"""Pre-flight as a user meets it: `harness validate` and `harness run` refuse the same bad
experiments with the same one line (exit 2) before Ray starts, on real tiny files; values that
used to pass validation and crash later are refused by the schema."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import yaml

from deepchest.data.prepare import prepare
from deepchest.findings import FINDINGS
from deepchest.models import SimpleCNN
from harness.cli import main
from harness.config import ExperimentConfig
from tests.conftest import REPO, tiny_config, write_config
from tests.test_packed import make_index, write_pngs


def errors(capsys) -> list[str]:
    """The error lines; every line on stderr must be one (or a start-up note)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.endswith(" ...")]
    assert lines and all(line.startswith("harness: error: ") for line in lines), err
    return [line.removeprefix("harness: error: ") for line in lines]


def refused_by_both(capsys, tmp_path, cfg: dict) -> list[str]:
    """`harness validate` and `harness run` give the same lines, exit 2, and no run starts."""
    path = write_config(tmp_path, cfg)
    assert main(["validate", str(path)]) == 2
    from_validate = errors(capsys)
    assert main(["run", str(path)]) == 2
    assert errors(capsys) == from_validate
    assert not (tmp_path / "runs").exists()
    return from_validate


def real_data(cfg: dict) -> dict:
    cfg["data"].pop("num_samples")
    return cfg


def chestmnist(path, sizes: dict[str, int], size: int = 28):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, len(FINDINGS)), dtype=np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def prepared_nih(tmp_path, splits: list[str]):
    """A real packed NIH folder whose splits hold the images ``splits`` names."""
    root = tmp_path / "raw"
    index = make_index(write_pngs(root, len(splits)), root, splits=splits)
    out = tmp_path / "nih-16"
    prepare(index, out, 16, workers=1)
    return out


# ---- the data source ---------------------------------------------------------------------


def test_validate_of_a_missing_chestmnist_file_fails_like_run(capsys, tmp_path):
    cfg = yaml.safe_load((REPO / "experiments" / "chestmnist.yaml").read_text())
    cfg["output"] = {"dir": str(tmp_path / "runs")}
    assert refused_by_both(capsys, tmp_path, cfg) == [
        "data.root: /data/medmnist/chestmnist_64.npz: ChestMNIST file or folder does not exist"
    ]
    assert main(["validate", str(REPO / "experiments" / "chestmnist.yaml")]) == 2
    capsys.readouterr()


def test_chestmnist_training_split_smaller_than_a_batch(capsys, tmp_path):
    path = chestmnist(tmp_path / "chestmnist.npz", {"train": 40, "val": 10, "test": 10})
    cfg = real_data(
        tiny_config(tmp_path, data={"dataset": "chestmnist", "root": str(path)}, train={})
    )
    cfg["train"]["batch_size"] = 64
    assert refused_by_both(capsys, tmp_path, cfg) == [
        f"train.batch_size: one batch (64 x 1 worker) is larger than the training split of "
        f"data.root {path} (40 images)"
    ]
    # one batch of 16 on each of 3 workers is larger too; 32 on 1 fits
    cfg["train"]["batch_size"], cfg["resources"]["workers_per_trial"] = 16, 3
    assert "one batch (16 x 3 workers)" in refused_by_both(capsys, tmp_path, cfg)[0]
    cfg["train"]["batch_size"], cfg["resources"]["workers_per_trial"] = 32, 1
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
    assert "data chestmnist (train 40, val 10, test 10 images)" in capsys.readouterr().out


def test_chestmnist_empty_val_and_test_splits(capsys, tmp_path):
    path = chestmnist(tmp_path / "chestmnist.npz", {"train": 40, "val": 0, "test": 0})
    cfg = real_data(tiny_config(tmp_path, data={"dataset": "chestmnist", "root": str(path)}))
    assert refused_by_both(capsys, tmp_path, cfg) == [
        f"data.root {path}: the val split is empty; the best epoch is picked on the val metrics",
        f"data.root {path}: the test split is empty; the test metrics are computed on it",
    ]


def test_chestmnist_sizes_come_from_the_headers_with_the_readers_checks(tmp_path):
    from deepchest.data import DatasetError, check_source
    from deepchest.data.chestmnist import chestmnist_split_sizes, read_chestmnist

    path = chestmnist(tmp_path / "chestmnist.npz", {"train": 7, "val": 2, "test": 3})
    assert chestmnist_split_sizes(path) == {"train": 7, "val": 2, "test": 3}
    data = {"dataset": "chestmnist", "root": str(path), "image_size": 64, "tasks": "all"}
    assert check_source(data) == {"train": 7, "val": 2, "test": 3}
    # a broken array is refused the same way by both, naming the key and the file
    rng = np.random.default_rng(1)
    arrays = {
        f"{s}_{k}": rng.integers(0, 2, (3, 28, 28) if k == "images" else (3, 14), dtype=np.uint8)
        for s in ("train", "val", "test")
        for k in ("images", "labels")
    }
    arrays["val_labels"] = np.full((3, 14), 2, np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as from_reader:
        read_chestmnist(path)
    with pytest.raises(DatasetError) as from_check:
        check_source(data)
    assert str(from_check.value) == f"data.root: {from_reader.value}"
    assert "val_labels[0, 0] is 2" in str(from_check.value)


def test_prepared_nih_training_split_smaller_than_a_batch(capsys, tmp_path):
    out = prepared_nih(tmp_path, ["train"] * 4 + ["val"] * 3 + ["test"] * 3)
    cfg = real_data(tiny_config(tmp_path, data={"dataset": "nih", "prepared": str(out)}, train={}))
    cfg["train"]["batch_size"] = 8
    assert refused_by_both(capsys, tmp_path, cfg) == [
        f"train.batch_size: one batch (8 x 1 worker) is larger than the training split of "
        f"data.prepared {out} (4 images)"
    ]
    cfg["train"]["batch_size"] = 4
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
    assert "data nih (train 4, val 3, test 3 images)" in capsys.readouterr().out


def test_prepared_folder_without_val_images(capsys, tmp_path):
    out = prepared_nih(tmp_path, ["train"] * 6 + ["test"] * 2)
    cfg = tiny_config(tmp_path, data={"dataset": "nih", "prepared": str(out)})
    cfg = real_data(cfg)
    cfg["train"]["batch_size"] = 2
    assert refused_by_both(capsys, tmp_path, cfg) == [
        f"data.prepared {out}: the val split is empty; the best epoch is picked on the val metrics"
    ]


def test_prepared_folder_missing_or_of_another_data_set(capsys, tmp_path):
    cfg = real_data(tiny_config(tmp_path, data={"dataset": "nih", "prepared": str(tmp_path)}))
    assert refused_by_both(capsys, tmp_path, cfg) == [
        f"data.prepared: {tmp_path / 'manifest.json'}: missing; not a prepared data set "
        "(harness data prepare)"
    ]
    out = prepared_nih(tmp_path, ["train"] * 4 + ["val", "test"])
    cfg["data"] = {"dataset": "chexpert", "prepared": str(out)}
    assert refused_by_both(capsys, tmp_path, cfg) == [
        f"data.prepared: {out} holds data set 'nih', not 'chexpert'"
    ]


def test_synthetic_empty_val_split(capsys, tmp_path):
    cfg = tiny_config(tmp_path, data={"val_fraction": 0.001})
    assert refused_by_both(capsys, tmp_path, cfg) == [
        "data.val_fraction: 0.001 of data.num_samples 240 leaves the val split empty; the best "
        "epoch is picked on the val metrics"
    ]


# ---- files the trials load ---------------------------------------------------------------


def test_pretrained_weights_are_loaded_before_ray(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, train={"pretrained": "weights.pt"})
    assert refused_by_both(capsys, tmp_path, cfg) == ["train.pretrained: weights.pt is not a file"]
    (tmp_path / "weights.pt").write_bytes(b"not a state dict")
    [line] = refused_by_both(capsys, tmp_path, cfg)
    assert line.startswith("train.pretrained: weights.pt: not a readable torch state dict (")
    torch.save({"conv": "a string"}, tmp_path / "weights.pt")
    assert refused_by_both(capsys, tmp_path, cfg) == [
        "train.pretrained: weights.pt: does not hold a state dict of tensors"
    ]
    # a real state dict of another network: named per backbone, in a few words
    state = SimpleCNN(1).state_dict()
    state["features.0.weight"] = torch.zeros(8, 1, 3, 3)
    state["extra.bias"] = torch.zeros(2)
    torch.save(state, tmp_path / "weights.pt")
    assert refused_by_both(capsys, tmp_path, cfg) == [
        "train.pretrained: weights.pt does not fit backbone 'simple_cnn' (1 unexpected key, "
        "first 'extra.bias'; 1 key of another shape, first 'features.0.weight')"
    ]
    cfg["grid"]["backbones"] = ["simple_cnn", "resnet18"]
    torch.save({"state_dict": SimpleCNN(1).state_dict()}, tmp_path / "weights.pt")
    [line] = refused_by_both(capsys, tmp_path, cfg)
    assert line.startswith("train.pretrained: weights.pt does not fit backbone 'resnet18' (")
    assert "missing keys, first 'conv1.weight'" in line
    cfg["grid"]["backbones"] = ["simple_cnn"]
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
    capsys.readouterr()


def test_initial_weights_file_is_checked_before_ray(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"deepchest": {"initial_weights": "accuracies.json"}}
    cfg = tiny_config(tmp_path, method_params=params)
    assert refused_by_both(capsys, tmp_path, cfg) == [
        "method_params.deepchest.initial_weights: accuracies.json is not a file"
    ]
    (tmp_path / "accuracies.json").write_text(json.dumps([0.9, 0.8]))
    [line] = refused_by_both(capsys, tmp_path, cfg)
    assert line.startswith("method_params.deepchest.initial_weights: method 'deepchest': ")
    assert "has 2 accuracies, expected 14 (one per task)" in line
    (tmp_path / "accuracies.json").write_text(json.dumps([0.9] * 14))
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
    capsys.readouterr()


def test_cluster_side_paths_are_listed_not_checked(capsys, tmp_path, monkeypatch):
    experiment = str(REPO / "experiments" / "chestmnist.yaml")
    assert main(["validate", experiment, "--address", "10.0.0.1:6379"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{experiment}: ok (")
    assert out[1:] == ["  not checked here: data.root (cluster-side path; so are its split sizes)"]
    # RAY_ADDRESS and cluster.address say the same as --address
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    cfg = tiny_config(
        tmp_path,
        data={"dataset": "nih", "prepared": "/cluster/nih-256"},
        train={"pretrained": "/cluster/resnet18.pt"},
        method_params={"deepchest": {"initial_weights": "/cluster/acc.json"}},
    )
    cfg = real_data(cfg)
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  not checked here: data.prepared (cluster-side path; so are its split sizes)",
        "  not checked here: train.pretrained (cluster-side path)",
        "  not checked here: method_params.deepchest.initial_weights (cluster-side path)",
    ]
    monkeypatch.delenv("RAY_ADDRESS")
    cfg["cluster"] = {"address": "10.0.0.1:6379"}
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
    capsys.readouterr()
    del cfg["cluster"]  # a local run checks them
    lines = refused_by_both(capsys, tmp_path, cfg)
    assert [line.split(":")[0] for line in lines] == [
        "data.prepared",
        "train.pretrained",
        "method_params.deepchest.initial_weights",
    ]


# ---- values that passed validation and crashed later -------------------------------------


def validate_lines(capsys, tmp_path, text: str) -> list[str]:
    path = tmp_path / "e.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    return errors(capsys)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"grid": {"seeds": [0, 1000000000000]}},
            "grid.seeds[1]: 1000000000000 is too large: a seed is an integer from 0 to "
            "4294967295 (2**32 - 1), what NumPy's and torch's seeding accept",
        ),
        (
            {"grid": {"seeds": [12345678901234567890123]}},
            "grid.seeds[0]: 12345678901234567890123 is too large",
        ),
        ({"data": {"seed": 2**32}}, "data.seed: 4294967296 is too large"),
        (
            {"resources": {"cpus_per_worker": 0.00001}},
            "resources.cpus_per_worker: 1e-05 is below 0.0001, the smallest share Ray schedules",
        ),
        (
            {"resources": {"gpus_per_worker": 0.00001}},
            "resources.gpus_per_worker: 1e-05 is below 0.0001, the smallest share Ray schedules",
        ),
        (
            {"resources": {"gpus_per_worker": 1.5}},
            "resources.gpus_per_worker: 1.5: more than one GPU per worker must be a whole number",
        ),
        ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number, not nan"),
        (
            {"resources": {"gpus_per_worker": float("inf")}},
            "resources.gpus_per_worker: must be 'auto' or a finite number, not inf",
        ),
        (
            {"method_params": {"deepchest": {"increase": float("nan")}}},
            "method_params.deepchest.increase: must be a finite number, not nan",
        ),
        (
            {"method_params": {"deepchest": {"max_weight": 10**400}}},
            "method_params.deepchest.max_weight: 1000",
        ),
    ],
)
def test_values_that_crashed_later_are_refused(capsys, tmp_path, change, expected):
    cfg = tiny_config(tmp_path, **change)
    lines = validate_lines(capsys, tmp_path, yaml.safe_dump(cfg))
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def _numeric_keys() -> list[tuple[str, str, str]]:
    """(section, key, 'int' | 'float') of every number in the schema."""
    keys = []
    for section, info in ExperimentConfig.model_fields.items():
        model = info.annotation
        if not isinstance(model, type) or not hasattr(model, "model_fields"):
            continue
        for key, field in model.model_fields.items():
            text = str(field.annotation)
            kind = "float" if "float" in text else "int" if "int" in text else None
            if kind and key != "seeds":
                # a mapping of numbers (cluster.max_resources) is tested through one entry
                keys.append((section, f"{key}.CPU" if "dict" in text else key, kind))
    return keys


def test_every_numeric_key_refuses_nan_inf_huge_and_bool(capsys, tmp_path):
    keys = _numeric_keys()
    # the audit covers the schema as it is: a new numeric key is tested without a change here
    assert {(s, k) for s, k, _ in keys} >= {
        ("data", "val_fraction"),
        ("train", "lr"),
        ("train", "max_failures"),
        ("resources", "cpus_per_worker"),
        ("resources", "max_concurrent_trials"),
    }
    for section, key, kind in keys:
        bad = [True, 10**30] + ([".nan", ".inf", "-.inf"] if kind == "float" else [])
        for value in bad:
            raw = tiny_config(tmp_path)
            name, _, entry = key.partition(".")
            if entry:
                raw.setdefault(section, {})[name] = {entry: "@"}
            else:
                raw.setdefault(section, {})[key] = "@"
            text = yaml.safe_dump(raw, sort_keys=False).replace("'@'", str(value))
            lines = validate_lines(capsys, tmp_path, text)
            mine = [line for line in lines if line.startswith(f"{section}.{key}: ")]
            assert mine, (section, key, value, lines)
            if value in (".nan", ".inf", "-.inf"):
                assert "a finite number, not " in mine[0], mine


def test_duplicate_yaml_keys_are_named_with_their_lines(capsys, tmp_path):
    text = yaml.safe_dump(tiny_config(tmp_path), sort_keys=False)
    lines = validate_lines(capsys, tmp_path, text + "train: {epochs: 1, epochs: 2}\n")
    assert len(lines) == 1 and lines[0].startswith("train: duplicate key (")
    lines = validate_lines(
        capsys, tmp_path, "name: a\ntrain:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n"
    )
    assert lines == [
        f"train.epochs: duplicate key ({tmp_path / 'e.yaml'}:5:3; first at 3:3); give each key once"
    ]


def test_deep_or_exploding_yaml_is_one_line(capsys, tmp_path):
    start = time.perf_counter()
    deep = "name: a\nmethod_params:\n  equal: " + "{a: " * 500 + "1" + "}" * 500 + "\n"
    lines = validate_lines(capsys, tmp_path, deep)
    assert len(lines) == 1 and lines[0].endswith("not valid YAML (nested deeper than 32 levels)")
    aliases = ["name: a", "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    aliases += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines = validate_lines(capsys, tmp_path, "\n".join(aliases) + "\n")
    assert len(lines) == 1 and "expands to more than 100000 values" in lines[0]
    assert time.perf_counter() - start < 10


# ---- harness data prepare's options ------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--val-fraction", "nan"], "val_fraction: must be a finite number in [0, 1), got nan"),
        (["--val-fraction", "inf"], "val_fraction: must be a finite number in [0, 1), got inf"),
        (["--seed", "-1"], "seed: must be an integer from 0 to 4294967295, got -1"),
        (["--seed", str(10**23)], f"seed: must be an integer from 0 to 4294967295, got {10**23}"),
        (["--image-size", "0"], "image_size: 0 is out of range 8 .. 2048"),
    ],
)
def test_prepare_options_are_refused_in_one_line(capsys, tmp_path, option, expected):
    from tests.test_readers import make_nih

    root = make_nih(tmp_path / "nih")
    args = ["data", "prepare", "--dataset", "nih", "--root", str(root), "--out"]
    assert main([*args, str(tmp_path / "out"), *option]) == 2
    assert errors(capsys) == [expected]
    assert not (tmp_path / "out").exists()


def test_a_trial_refuses_unfit_weights_with_the_same_line(tmp_path, monkeypatch):
    """On a cluster the trial reads the weights; it says what pre-flight would have said."""
    from harness.config import parse_config
    from harness.launch import trial_identities, trial_spec
    from harness.trainloop import MemoryReporter, train_trial

    state = SimpleCNN(1).state_dict()
    state["extra.bias"] = torch.zeros(2)
    torch.save(state, tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(tiny_config(tmp_path, train={"pretrained": "weights.pt"}))
    spec = trial_spec(cfg, trial_identities(cfg)[0], gpus=0)
    with pytest.raises(ValueError) as exc:
        train_trial(spec, MemoryReporter())
    assert str(exc.value) == (
        f"train.pretrained: {tmp_path / 'weights.pt'} does not fit backbone 'simple_cnn' "
        "(1 unexpected key, first 'extra.bias')"
    )


def test_methods_that_draw_more_than_one_training_batch_per_step(capsys, tmp_path):
    """SDMGrad takes two training batches per step and Auto-Lambda a validation batch: a
    split that holds one batch but not what such a method draws is refused before Ray (every
    such trial would fail at its start)."""
    cfg = tiny_config(
        tmp_path, grid={"methods": ["equal", "sdmgrad", "auto_lambda"]}, train={"batch_size": 100}
    )
    assert refused_by_both(capsys, tmp_path, cfg) == [
        "grid.methods: sdmgrad takes 2 batches per step (2 x 100 images), more than the "
        "training split of the synthetic data set (data.num_samples 240) (168 images)",
        "grid.methods: auto_lambda draws a validation batch each step (100 images), more than "
        "the validation split of the synthetic data set (data.num_samples 240) (36 images)",
    ]
