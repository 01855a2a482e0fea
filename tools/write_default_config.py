#!/usr/bin/env python3
"""Write config/default.toml from the configuration schema (src/emotion_classifier/config.py).

Every key appears with its default value and the comment written above its field in the schema,
so the file documents the whole configuration and cannot drift from the code (a test compares
them). The training keys are listed once, under [training]; a model section lists its own keys.
Run after adding or changing a key:

    python tools/write_default_config.py
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

from emotion_classifier import config as config_module

SCHEMA = Path(config_module.__file__)
OUTPUT = Path(__file__).resolve().parents[1] / "config" / "default.toml"


def field_comments() -> dict[tuple[str, str], list[str]]:
    """Map (class name, field name) to the comment lines directly above the field."""
    lines = SCHEMA.read_text().splitlines()
    comments: dict[tuple[str, str], list[str]] = {}
    for node in ast.parse(SCHEMA.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                block: list[str] = []
                line_number = statement.lineno - 2
                while line_number >= 0 and lines[line_number].strip().startswith("#"):
                    block.insert(0, lines[line_number].strip())
                    line_number -= 1
                comments[(node.name, statement.target.id)] = block
    return comments


def render() -> str:
    comments = field_comments()
    defaults = config_module.Config()
    output = [
        "# Every configuration key with its default value, written by tools/write_default_config.py",
        "# from src/emotion_classifier/config.py. Other configuration files set only what differs;",
        "# keys they leave out keep these values. Relative paths are relative to the project root.",
        "",
    ]
    for section in dataclasses.fields(config_module.Config):
        section_object = getattr(defaults, section.name)
        docstring = (type(section_object).__doc__ or "").strip().splitlines()[0]
        output.append(f"# {docstring}")
        output.append(f"[{section.name}]")
        for key in config_module.section_keys(section_object):
            # A field's comment is in the class that declares it, or in a base class.
            classes = [cls.__name__ for cls in type(section_object).__mro__]
            output.extend(next((comments[(name, key)] for name in classes if comments.get((name, key))), []))
            output.append(f"{key} = {json.dumps(getattr(section_object, key))}")
        output.append("")
    return "\n".join(output)


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
