"""Docs that match behaviour: config/relay.example.toml lists every key relay reads and
every environment variable, and the README names every variable too (issue 21)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from relay.config import ENV_OVERRIDES, Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "relay.example.toml"
# Set by relay for the processes it starts itself (relay/workers.py), not by users.
INTERNAL = {"RELAY_WORKER", "RELAY_WORKER_PARENT"}
# Not a setting: filled in by load_settings.
DERIVED = {"config_path"}


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The settings models inside an annotation (list[TenantConfig], X | None, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if get_origin(annotation) in (list, Union, UnionType) or get_args(annotation):
        for arg in get_args(annotation):
            yield from _models(arg)


def keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key path a config file may hold, as ``server.port``, ``tenants.destinations.url``."""
    for name, info in model.model_fields.items():
        if name in DERIVED:
            continue
        path = f"{prefix}{name}"
        nested = list(_models(info.annotation))
        if nested:
            for sub in nested:
                yield from keys(sub, path + ".")
        else:
            yield path


def free_form(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Key paths whose value is a table of the user's own keys (metadata, headers)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = list(_models(info.annotation))
        for sub in nested:
            yield from free_form(sub, path + ".")
        if not nested and get_origin(info.annotation) is dict:
            yield path


def example_keys() -> set[str]:
    """Key paths the example sets or shows commented out (``# key = ...``) under its
    tables (``[a.b]``, ``[[a.b]]``, also commented), inline tables included."""
    found: set[str] = set()
    table, last = "", ""
    for raw in EXAMPLE.read_text().splitlines():
        line = raw.strip().removeprefix("#").strip()
        header = re.fullmatch(r"\[\[?([a-z_.]+)\]\]?", line)
        if header:
            table = header.group(1) + "."
            continue
        key = re.match(r"([a-z_]+)\s*=", line)
        if key:
            last = table + key.group(1)
            found.add(last)
        if key or line.startswith("{"):
            # Inline tables: grants = [{ recipients = ..., topics = ... }]
            for inner in re.findall(r"[{,]\s*([a-z_]+)\s*=", line):
                found.add(f"{last}.{inner}")
    known = set(keys(Settings))
    tables = {k.rsplit(".", 1)[0] for k in known if "." in k}
    mine = tuple(path + "." for path in free_form(Settings))
    return {k for k in found if k not in tables and not k.startswith(mine)}


def variables_relay_reads() -> set[str]:
    names = set(ENV_OVERRIDES)
    for path in (ROOT / "relay").rglob("*.py"):
        names.update(re.findall(r"\"(RELAY_[A-Z0-9_]+)\"", path.read_text()))
    return names - INTERNAL


def test_every_key_relay_reads_is_in_the_example() -> None:
    missing = sorted(set(keys(Settings)) - example_keys())
    assert not missing, f"config/relay.example.toml lacks {missing}"


def test_every_key_in_the_example_is_one_relay_reads() -> None:
    unknown = sorted(example_keys() - set(keys(Settings)))
    assert not unknown, f"config/relay.example.toml shows keys relay does not read: {unknown}"


def test_the_example_parses_and_its_uncommented_keys_validate() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    Settings.model_validate(raw)


def test_every_environment_variable_is_in_the_example_and_the_readme() -> None:
    example = EXAMPLE.read_text()
    readme = (ROOT / "README.md").read_text()
    variables = variables_relay_reads()
    assert {"RELAY_CONFIG", "RELAY_HOME", "RELAY_LOG_LEVEL", "RELAY_RETENTION_DAYS"} <= variables
    for name in sorted(variables):
        # One per key of [delivery.webhook.outpost], documented as a pattern (the keys
        # themselves are checked above).
        shown = "RELAY_WEBHOOK_OUTPOST_<KEY>" if name.startswith("RELAY_WEBHOOK_OUTPOST_") else name
        assert shown in example, f"config/relay.example.toml does not mention {name}"
        assert shown in readme, f"README.md does not mention {name}"


def test_the_readme_does_not_promise_a_generated_secret_for_secret_env() -> None:
    """An unset secret_env variable stops the start; only a destination with neither
    secret nor secret_env gets a generated one."""
    readme = (ROOT / "README.md").read_text()
    assert "generated and kept if unset" not in readme
