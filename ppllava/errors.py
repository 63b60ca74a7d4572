"""Errors a user can fix: one line naming the file, field or argument, which the CLI prints before exiting 2.

`UserError` is the project's own; `read_yaml` turns a YAML file's syntax errors (and Python tags, which
safe_load refuses) into one, with the file and the line; `read_json` names a JSON file cut short or not JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


class UserError(ValueError):
    """Bad input the user can fix; the message is the whole line."""


def yaml_problem(error: yaml.YAMLError) -> str:
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    problem = problem or (str(error).strip().splitlines() or ["not valid YAML"])[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def parse_yaml(text: str, where: str):
    """safe_load of `text`; a syntax error or a Python tag is a UserError naming `where`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({yaml_problem(e)})") from e


def read_yaml(path: str | Path):
    """A YAML file a user wrote (recipe, data config, cluster, DeepSpeed or architecture file)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start})") from e
    return parse_yaml(text, str(path))


def read_json(path: str | Path, what: str = ""):
    """A JSON file a user handed over (a checkpoint's config.json, an index): a file cut short or not JSON is a
    UserError naming it (`what`: e.g. "checkpoint DIR: " before the path)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what}{path} is a folder; expected a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{what}{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        f"copy it again") from e
    except json.JSONDecodeError as e:
        raise UserError(f"{what}{path}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno}); it may have been "
                        f"cut short: copy it again") from e
