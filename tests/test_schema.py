"""`harness schema`: the experiment file's JSON Schema, its shipped copy, and the README's table
of keys agreeing with it (descriptions live in harness/config.py only)."""

from __future__ import annotations

import json
import re

import pytest
from jsonschema import Draft202012Validator

from harness.cli import main
from harness.config import _read_yaml, json_schema_text
from tests.conftest import REPO

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=./schema.json"


def printed_schema(capsys) -> dict:
    assert main(["schema"]) == 0
    return json.loads(capsys.readouterr().out)


def resolve(schema: dict, node: dict) -> dict:
    """A property's own schema: its ``$ref``, or the model branch of ``X | None``."""
    for branch in node.get("anyOf", []):
        if "$ref" in branch:
            node = branch
    if "$ref" in node:
        return schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def schema_keys(schema: dict) -> dict[str, dict]:
    """Every key of the file, dotted (``train.lr``), sections included, with its property."""
    keys: dict[str, dict] = {}

    def walk(model: dict, prefix: str) -> None:
        for name, prop in model["properties"].items():
            key = prefix + name
            keys[key] = {**prop, "required": name in model.get("required", [])}
            inner = resolve(schema, prop)
            if "properties" in inner:
                walk(inner, key + ".")

    walk(schema, "")
    return keys


def is_section(schema: dict, prop: dict) -> bool:
    return "properties" in resolve(schema, prop)


def test_schema_is_valid_json_schema_and_every_key_is_described(capsys):
    schema = printed_schema(capsys)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    keys = schema_keys(schema)
    assert {"name", "train.epochs", "grid.sweep", "tuning.budget", "output.storage"} <= set(keys)
    undescribed = [key for key, prop in keys.items() if not prop.get("description")]
    assert undescribed == []
    assert keys["train.epochs"]["description"] == "epochs per trial"
    assert keys["name"]["required"] and keys["tuning.budget"]["required"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_validate_against_the_schema_and_name_it(path, capsys):
    text = path.read_text()
    assert text.splitlines()[0] == SCHEMA_LINE  # editors find ./schema.json beside the file
    validator = Draft202012Validator(printed_schema(capsys))
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in validator.iter_errors(_read_yaml(text, str(path)))
    ]
    assert errors == []


def test_schema_refuses_what_the_harness_refuses(capsys):
    validator = Draft202012Validator(printed_schema(capsys))
    bad = {"name": "x", "train": {"epochz": 1, "lr": -1}, "grid": {"seeds": []}}
    problems = sorted(".".join(map(str, e.path)) for e in validator.iter_errors(bad))
    assert problems == ["grid.seeds", "train", "train.lr"]  # unknown key, lr <= 0, no seeds
    assert list(validator.iter_errors({"train": {}}))  # no name


def essence(node):
    """The schema without pydantic's ``title`` entries (generated from the names, and what
    pydantic versions have written differently); every key, type, bound, default, allowed
    value and description of harness/config.py is kept."""
    if isinstance(node, dict):
        return {k: essence(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [essence(v) for v in node]
    return node


def test_shipped_schema_json_is_up_to_date():
    shipped = json.loads((REPO / "experiments" / "schema.json").read_text())
    assert essence(shipped) == essence(json.loads(json_schema_text())), (
        "experiments/schema.json is stale: run `harness schema --output experiments/schema.json`"
    )


def test_schema_output_file(tmp_path, capsys):
    out = tmp_path / "schema.json"
    assert main(["schema", "--output", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert out.read_text() == json_schema_text()
    assert main(["schema", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"harness: error: --output {tmp_path} is a directory; give a file name\n"
    )


def readme_table() -> dict[str, str]:
    """The README's "Experiment file reference" table: dotted key -> its default cell's text
    (``method_params.<method>`` is ``method_params``; a row of two keys gives two)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Experiment file reference", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        key_cell, default_cell = (cell.strip() for cell in line.split(" | ")[:2])
        keys = re.findall(r"`([^`]+)`", key_cell)
        defaults = re.findall(r"`([^`]+)`", default_cell) or [default_cell] * len(keys)
        assert len(defaults) == len(keys), line
        for key, default in zip(keys, defaults, strict=True):
            rows.setdefault(re.sub(r"\.<[^>]+>", "", key), default)
    return rows


def test_readme_table_agrees_with_the_schema(capsys):
    schema = printed_schema(capsys)
    keys = schema_keys(schema)
    table = readme_table()
    assert "train.lr" in table and table["train.lr"] == "1e-3"
    for key, default in table.items():
        assert key in keys, f"README key {key} is not in the schema"
        prop = keys[key]
        if default in ("required", "(required)"):
            assert prop["required"], key
        elif default != "—":  # method_params.<variant>: no default of its own
            # the README's defaults are YAML, read as the harness reads a file (1e-3: a float)
            # (compared as JSON: false is not 0, 1.0 not 1)
            given = json.dumps(_read_yaml(default, "README"))
            assert json.dumps(prop.get("default")) == given, key
    leaves = {key for key, prop in keys.items() if not is_section(schema, prop)}
    missing = sorted(leaves - set(table))
    assert missing == [], f"schema keys missing from README's table: {missing}"
