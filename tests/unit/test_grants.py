"""Publisher grants and their configuration: who may publish what to which pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import ConfigError, GrantConfig, PublisherConfig, Settings, load_settings
from relay.grants import grant_covers, identify, may_publish

USER = "https://user.example.com/profile/card#me"
OTHER = "https://other.example.com/profile/card#me"


def grant(recipients: Any, topics: Any) -> GrantConfig:
    return GrantConfig(recipients=recipients, topics=topics)


def publisher(name: str, key: str, *grants: GrantConfig) -> PublisherConfig:
    return PublisherConfig(name=name, key=key, grants=list(grants))


@pytest.mark.parametrize(
    ("g", "recipient", "topic", "allowed"),
    [
        (grant("*", "*"), USER, "realestate/contact#add", True),
        (grant([USER], ["realestate/contact#add"]), USER, "realestate/contact#add", True),
        (grant([USER], ["realestate/contact#add"]), USER, "realestate/contact#remove", False),
        (grant([USER], ["realestate/contact#add"]), OTHER, "realestate/contact#add", False),
        # No #action: every action of the topic.
        (grant([USER], ["realestate/contact"]), USER, "realestate/contact#remove", True),
        (grant([USER], ["realestate/contact"]), USER, "realestate/contacts#add", False),
        # Trailing /*: everything under the prefix, nothing beside it.
        (grant("*", ["realestate/*"]), OTHER, "realestate/listing#update", True),
        (grant("*", ["realestate/*"]), OTHER, "realestates/listing#update", False),
        (grant("*", ["realestate/*"]), OTHER, "crm/contact#add", False),
        # Recipients are compared exactly: another fragment is another identity.
        (grant([USER], "*"), USER.replace("#me", "#you"), "crm/contact#add", False),
    ],
)
def test_grant_covers(g: GrantConfig, recipient: str, topic: str, allowed: bool) -> None:
    assert grant_covers(g, recipient, topic) is allowed


def test_any_grant_may_allow_and_none_means_refused() -> None:
    grants = [grant([USER], ["crm/*"]), grant([OTHER], ["realestate/contact"])]
    assert may_publish(grants, USER, "crm/contact#add")
    assert may_publish(grants, OTHER, "realestate/contact#add")
    # Each grant is a pair: USER's topics do not extend to OTHER and back.
    assert not may_publish(grants, OTHER, "crm/contact#add")
    assert not may_publish(grants, USER, "realestate/contact#add")
    assert not may_publish([], USER, "crm/contact#add")


@given(recipient=st.text(), topic=st.text())
def test_a_publisher_without_grants_may_publish_nothing(recipient: str, topic: str) -> None:
    assert not may_publish([], recipient, topic)


def test_identify_finds_the_key_owner_and_nobody_else() -> None:
    publishers = [publisher("a", "key-a-0123456789"), publisher("b", "key-b-0123456789")]
    assert identify(publishers, "key-b-0123456789") is publishers[1]
    assert identify(publishers, "key-a-0123456789") is publishers[0]
    assert identify(publishers, "key-b-012345678") is None
    assert identify(publishers, "") is None
    assert identify([], "key-a-0123456789") is None


# --- configuration ---------------------------------------------------------------------


def settings(**raw: Any) -> Settings:
    return Settings.model_validate(raw)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return load_settings(path, env=env or {})


def test_publishers_and_pods_load_from_the_file(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        f"""
        [[tenants]]
        id = "user"
        pods = ["{USER}"]

        [[publishers]]
        name = "crm"
        key_env = "CRM_KEY"
        grants = [{{ recipients = "*", topics = ["realestate/contact"] }},
                  {{ recipients = ["{USER}"], topics = "*" }}]
        """,
        env={"CRM_KEY": "from-the-environment"},
    )
    assert loaded.tenants[0].pods == [USER]
    [crm] = loaded.publishers
    assert crm.key == "from-the-environment"
    assert crm.grants[0].recipients == "*" and crm.grants[0].topic_list == ["realestate/contact"]
    assert crm.grants[1].recipients == [USER] and crm.grants[1].topic_list == ["*"]


def test_unset_key_env_names_the_key(tmp_path: Path) -> None:
    text = '[[publishers]]\nname = "crm"\nkey_env = "CRM_KEY"\n'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == "publishers[0].key_env"
    assert "CRM_KEY is not set" in caught.value.problem


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[[publishers]]\nname = "a"\n', "publishers[0]", "needs a key"),
        (
            '[[publishers]]\nname = "a"\nkey = "k"\ngrants = [{ recipients = "*" }]\n',
            "publishers[0].grants[0].topics",
            "required key is missing",
        ),
        (
            '[[publishers]]\nname = "a"\nkey = "k"\ngrants = [{ recipients = "*", topics = [] }]\n',
            "publishers[0].grants[0].topics",
            "at least one",
        ),
        (
            '[[publishers]]\nname = "a"\nkey = "k"\n'
            'grants = [{ recipients = ["user.example.com"], topics = "*" }]\n',
            "publishers[0].grants[0].recipients",
            "not a pod URL",
        ),
        (
            '[[publishers]]\nname = "a"\nkey = "k"\n[[publishers]]\nname = "a"\nkey = "j"\n',
            "(top level)",
            "publishers[1].name 'a' is declared twice",
        ),
        (
            '[[publishers]]\nname = "a"\nkey = "k"\n[[publishers]]\nname = "b"\nkey = "k"\n',
            "(top level)",
            "publishers[1].key is the same as publishers[0].key",
        ),
        ('[[tenants]]\nid = "t"\npods = ["card#me"]\n', "tenants[0].pods", "not a pod URL"),
        (
            f'[[tenants]]\nid = "t"\npods = ["{USER}"]\n[[tenants]]\nid = "u"\npods = ["{USER}"]\n',
            "(top level)",
            "tenants[1].pods[0]",
        ),
    ],
)
def test_bad_publisher_config_names_the_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_a_duplicate_key_is_never_echoed(tmp_path: Path) -> None:
    text = (
        '[[publishers]]\nname = "a"\nkey = "s3cret-value"\n'
        '[[publishers]]\nname = "b"\nkey = "s3cret-value"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert "s3cret-value" not in str(caught.value)


def test_no_publishers_is_the_default() -> None:
    assert settings().publishers == []
    assert settings(tenants=[{"id": "t"}]).tenants[0].pods == []
