"""Dispatcher groups (relay/groups.py): who claims which tenant's rows, and the config
that declares them, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load_settings
from relay.groups import DispatchGroup

GROUPS = {"latency": ["b", "c"], "batch": ["d"]}


def test_a_group_dispatcher_serves_its_tenants_and_nothing_else() -> None:
    latency = DispatchGroup.of("latency", GROUPS, 30)
    assert latency.serves("b") and latency.serves("c")
    assert not latency.serves("a") and not latency.serves("d")
    # However long another's rows have waited: a group's dispatcher never takes over.
    assert not latency.takes("a", 3600) and not latency.takes("d", 3600)


def test_a_dispatcher_of_no_group_takes_a_grouped_tenant_only_after_the_takeover_time() -> None:
    default = DispatchGroup.of(None, GROUPS, 30)
    assert default.serves("a") and default.takes("a", 0)
    assert not default.serves("b")
    assert not default.takes("b", 29.9)
    assert default.takes("b", 30) and default.takes("d", 31)
    assert default.group_of("d") == "batch" and default.group_of("a") is None


def test_without_groups_every_dispatcher_serves_every_tenant() -> None:
    everyone = DispatchGroup.of(None, {}, 30)
    assert everyone.serves("anyone") and everyone.takes("anyone", 0)
    assert everyone.describe() == "all tenants"


def test_start_up_says_whom_a_dispatcher_delivers_for() -> None:
    assert DispatchGroup.of("latency", GROUPS, 30).describe() == "group latency: tenants b, c"
    assert "groups batch, latency after 30 s" in DispatchGroup.of(None, GROUPS, 30).describe()


def config(tmp_path: Path, delivery: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f"[delivery]\n{delivery}\n")
    return path


def test_groups_load_from_the_file_and_the_group_from_the_environment(tmp_path: Path) -> None:
    path = config(tmp_path, 'group_takeover_seconds = 5\ngroups = { latency = ["b"] }')
    settings = load_settings(path, env={"RELAY_DISPATCH_GROUP": "latency"})
    assert settings.delivery.groups == {"latency": ["b"]}
    assert settings.delivery.group == "latency"
    assert settings.delivery.group_takeover_seconds == 5


@pytest.mark.parametrize(
    ("delivery", "key", "said"),
    [
        ('groups = { latency = ["b"], bulk = ["a", "b"] }', "delivery.groups.bulk[1]", "latency"),
        ("groups = { latency = [] }", "delivery.groups.latency", "at least one tenant"),
        ('groups = { "no spaces" = ["b"] }', "delivery.groups.no spaces", "pattern"),
        ('group = "latency"', "delivery.group", "none are declared"),
        ('groups = { bulk = ["a"] }\ngroup = "latency"', "delivery.group", "(bulk)"),
        ("group_takeover_seconds = 0", "delivery.group_takeover_seconds", "greater than 0"),
    ],
)
def test_a_bad_group_stops_the_start_naming_the_key(
    tmp_path: Path, delivery: str, key: str, said: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config(tmp_path, delivery), env={})
    assert info.value.key == key
    assert said in info.value.problem
    assert info.value.fix


def test_an_unknown_group_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = config(tmp_path, 'groups = { latency = ["b"] }')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"RELAY_DISPATCH_GROUP": "latncy"})
    assert "RELAY_DISPATCH_GROUP" in str(info.value)
    assert "'latncy' is not a group of delivery.groups (latency)" in str(info.value)
