"""Config loading: layers (defaults, file, env) and errors that name file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load_settings

MINIMAL = """
[server]
admin_api_key = "k"

[[tenants]]
id = "acme"

[[tenants.destinations]]
id = "orders"
url = "https://example.com/hook"
topics = ["order.created"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_file_values_and_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), env={})
    assert settings.server.port == 3333
    assert settings.admin_api_key == "k"
    assert settings.database.url is None
    [tenant] = settings.tenants
    assert tenant.destinations[0].topic_list == ["order.created"]
    assert tenant.destinations[0].enabled is True


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "RELAY_DATABASE_URL": "postgresql://u@db/relay",
        "RELAY_PORT": "4000",
        "RELAY_HOST": "0.0.0.0",
        "RELAY_ADMIN_API_KEY": "from-env",
        "RELAY_DISPATCH_LEASE_SECONDS": "12.5",
        "RELAY_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8, 10.0.0.0/8",
    }
    settings = load_settings(write(tmp_path, MINIMAL), env=env)
    assert settings.database.url == "postgresql://u@db/relay"
    assert settings.server.port == 4000
    assert settings.server.host == "0.0.0.0"
    assert settings.admin_api_key == "from-env"
    assert settings.delivery.lease_seconds == 12.5
    assert settings.delivery.allow_private_networks == ["127.0.0.0/8", "10.0.0.0/8"]


def test_database_timeouts_default_and_come_from_the_environment(tmp_path: Path) -> None:
    defaults = load_settings(write(tmp_path, MINIMAL), env={}).database
    assert defaults.statement_timeout_seconds == 30
    assert defaults.xmin_horizon_warning_seconds == 300
    env = {
        "RELAY_DATABASE_STATEMENT_TIMEOUT_SECONDS": "600",
        "RELAY_XMIN_HORIZON_WARNING_SECONDS": "0",
    }
    database = load_settings(write(tmp_path, MINIMAL), env=env).database
    assert database.statement_timeout_seconds == 600
    assert database.xmin_horizon_warning_seconds == 0
    for name, key in (
        ("RELAY_DATABASE_STATEMENT_TIMEOUT_SECONDS", "database.statement_timeout_seconds"),
        ("RELAY_XMIN_HORIZON_WARNING_SECONDS", "database.xmin_horizon_warning_seconds"),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(write(tmp_path, MINIMAL), env={name: "-1"})
        assert info.value.key == key and info.value.fix


def test_strict_publish_is_off_by_default_and_comes_from_file_or_environment(
    tmp_path: Path,
) -> None:
    assert load_settings(write(tmp_path, MINIMAL), env={}).api.strict_publish is False
    in_file = load_settings(write(tmp_path, MINIMAL + "\n[api]\nstrict_publish = true\n"), env={})
    assert in_file.api.strict_publish is True
    from_env = load_settings(write(tmp_path, MINIMAL), env={"RELAY_API_STRICT_PUBLISH": "true"})
    assert from_env.api.strict_publish is True
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, MINIMAL), env={"RELAY_API_STRICT_PUBLISH": "maybe"})
    assert info.value.key == "api.strict_publish"
    assert "RELAY_API_STRICT_PUBLISH" in info.value.problem
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[api]\nstrict = true\n"), env={})
    assert info.value.key == "api.strict" and "unknown key" in info.value.problem


def test_missing_default_file_with_env_only_is_a_valid_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config/relay.toml here
    settings = load_settings(env={"RELAY_ADMIN_API_KEY": "k", "RELAY_PORT": "1234"})
    assert settings.source == "environment"
    assert settings.server.port == 1234
    assert settings.tenants == []


def test_relay_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = load_settings(env={"RELAY_CONFIG": str(path)})
    assert settings.config_path == str(path)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml", env={})
    assert "nope.toml" in str(info.value)
    assert "file not found" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[server]\nport = 'abc'\n", "server.port", "valid integer"),
        ("[server]\nport = 70000\n", "server.port", "less than or equal to 65535"),
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\n",
            "tenants[0].destinations[0].url",
            "required key is missing",
        ),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'ftp://x'\n",
            "tenants[0].destinations[0].url",
            "http:// or https://",
        ),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'http://x'\n"
            "type = 'sqs'\n",
            "tenants[0].destinations[0].type",
            "'webhook'",
        ),
        (
            "[delivery]\nallow_private_networks = ['not-a-cidr']\n",
            "delivery.allow_private_networks",
            "not a CIDR",
        ),
        ("[[tenants]]\nid = 'a'\n[[tenants]]\nid = 'a'\n", "(top level)", "declared twice"),
        ("[server]\npublic_url = 'relay.example.com'\n", "server.public_url", "base URL"),
        ("[server]\npublic_url = 'https://x/?a=1'\n", "server.public_url", "no query"),
    ],
)
def test_invalid_values_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    error = info.value
    assert error.source == str(path)
    assert error.key == key
    assert words in error.problem
    assert error.fix
    assert str(path) in str(error) and key in str(error)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_secret_env_reference_must_be_set(tmp_path: Path) -> None:
    text = MINIMAL.replace('topics = ["order.created"]', 'secret_env = "ORDERS_SECRET"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.key == "tenants[0].destinations[0].secret_env"
    assert "ORDERS_SECRET" in info.value.problem
    settings = load_settings(path, env={"ORDERS_SECRET": "whsec_abc"})
    assert settings.tenants[0].destinations[0].secret == "whsec_abc"


def test_shipped_config_files_are_valid(repo_root: Path) -> None:
    load_settings(repo_root / "config" / "relay.toml", env={})
    env = {
        "RELAY_ADMIN_API_KEY": "k",
        "ACME_WEBHOOK_SECRET": "whsec_x",
        "PAGER_WEBHOOK_SECRET": "whsec_y",
    }
    example = load_settings(repo_root / "config" / "relay.example.toml", env=env)
    assert example.tenants
    assert example.operator_events.sinks[0].secret == "whsec_y"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[logging]\nlevel = 'VERBOSE'\n", "logging.level", "'DEBUG'"),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'http://'\n",
            "tenants[0].destinations[0].url",
            "with a host",
        ),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'http://x'\n"
            "topics = []\n",
            "tenants[0].destinations[0].topics",
            "at least one",
        ),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'http://x'\n"
            "custom_headers = { host = 'evil' }\n",
            "tenants[0].destinations[0].custom_headers",
            "'host' is set by relay",
        ),
        (
            "[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'http://x'\n"
            'custom_headers = { x-a = "1\\r\\nx-b: 2" }\n',
            "tenants[0].destinations[0].custom_headers",
            "line breaks",
        ),
    ],
)
def test_config_refuses_what_a_delivery_could_not_use(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert info.value.key == key
    assert words in info.value.problem


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[logging]\nlevel = 'debug'\n"), env={})
    assert settings.logging.level == "DEBUG"


def test_webhook_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    defaults = load_settings(write(tmp_path, MINIMAL), env={}).delivery
    assert defaults.webhook_mode == "standard"
    assert defaults.webhook.outpost.header_prefix == "x-outpost-"
    assert defaults.webhook.outpost.event_id_header_name is None
    assert defaults.webhook.standard.header_prefix == "webhook-"
    text = (
        MINIMAL.replace(
            "[[tenants]]",
            "[delivery]\nwebhook_mode = 'outpost'\n"
            "[delivery.webhook.outpost]\n"
            "signature_content_template = '{{.Timestamp.Unix}}.{{.Body}}'\n"
            "signature_header_template = 't={{.Timestamp.Unix}},v0={{.Signatures | join \",\"}}'\n"
            "topic_header_name = ''\n\n[[tenants]]",
        )
        + "signature_mode = 'standard'\n"
    )
    settings = load_settings(write(tmp_path, text), env={})
    outpost = settings.delivery.webhook.outpost
    assert settings.delivery.webhook_mode == "outpost"
    assert outpost.signature_content_template == "{{.Timestamp.Unix}}.{{.Body}}"
    assert outpost.topic_header_name == ""  # not sent
    # A destination's own mode; signature_mode is its former name.
    assert settings.tenants[0].destinations[0].webhook_mode == "standard"
    env = {
        "RELAY_WEBHOOK_MODE": "standard",
        "RELAY_WEBHOOK_OUTPOST_HEADER_PREFIX": "x-acme-",
        "RELAY_WEBHOOK_OUTPOST_EVENT_ID_HEADER_NAME": "",
        "RELAY_WEBHOOK_OUTPOST_SIGNATURE_HEADER_NAME": "X-Signature",
        "RELAY_WEBHOOK_OUTPOST_SIGNATURE_ENCODING": "base64",
        "RELAY_WEBHOOK_OUTPOST_SIGNATURE_ALGORITHM": "hmac-sha1",
        "RELAY_WEBHOOK_STANDARD_HEADER_PREFIX": "x-std-",
        "RELAY_WEBHOOK_STANDARD_UNPREFIXED_METADATA": "false",
        "RELAY_WEBHOOK_INCLUDE_MILLISECOND_TIMESTAMP": "true",
    }
    webhook = load_settings(write(tmp_path, text), env=env).delivery.webhook
    assert load_settings(write(tmp_path, text), env=env).delivery.webhook_mode == "standard"
    assert (webhook.outpost.header_prefix, webhook.outpost.event_id_header_name) == ("x-acme-", "")
    assert webhook.outpost.signature_header_name == "X-Signature"
    assert (webhook.outpost.signature_encoding, webhook.outpost.signature_algorithm) == (
        "base64",
        "hmac-sha1",
    )
    assert webhook.standard.header_prefix == "x-std-"
    assert webhook.standard.unprefixed_metadata is False
    assert webhook.include_millisecond_timestamp is True


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"RELAY_WEBHOOK_MODE": "default"}, "delivery.webhook_mode", "'standard' or 'outpost'"),
        (
            {"RELAY_WEBHOOK_OUTPOST_SIGNATURE_ENCODING": "b64"},
            "delivery.webhook.outpost.signature_encoding",
            "'hex' or 'base64'",
        ),
        (
            {"RELAY_WEBHOOK_OUTPOST_SIGNATURE_ALGORITHM": "hmac-md5"},
            "delivery.webhook.outpost.signature_algorithm",
            "'hmac-sha256' or 'hmac-sha1'",
        ),
        (
            {"RELAY_WEBHOOK_OUTPOST_SIGNATURE_HEADER_TEMPLATE": "{{.Body}}"},
            "delivery.webhook.outpost.signature_header_template",
            "not available in the header template",
        ),
        (
            {"RELAY_WEBHOOK_OUTPOST_SIGNATURE_CONTENT_TEMPLATE": "{{.Timestamp}}"},
            "delivery.webhook.outpost.signature_content_template",
            "{{.Timestamp.Unix}}",
        ),
        (
            {"RELAY_WEBHOOK_STANDARD_HEADER_PREFIX": "x std"},
            "delivery.webhook.standard.header_prefix",
            "only letters",
        ),
    ],
)
def test_a_bad_webhook_setting_names_the_key_the_variable_and_what_is_allowed(
    tmp_path: Path, env: dict[str, str], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, MINIMAL), env=env)
    assert info.value.key == key
    assert words in info.value.problem
    [variable] = env
    assert variable in info.value.problem and variable in info.value.fix


def test_system_headers_under_one_name_are_refused(tmp_path: Path) -> None:
    text = "[delivery.webhook.outpost]\ntopic_header_name = 'X-Outpost-Event-Id'\n"
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert info.value.key == "delivery.webhook.outpost"
    assert "event-id and topic headers are both named" in info.value.problem


SINK = "[[operator_events.sinks]]\nid = 'ops'\nurl = 'https://ops.example.com/'\n"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            SINK + "topics = ['alert.destination.disabld']\n",
            "operator_events.sinks[0].topics",
            "'alert.destination.disabld' is not an operator event topic",
        ),
        (SINK + "topics = []\n", "operator_events.sinks[0].topics", "at least one"),
        (SINK + SINK, "operator_events", "sinks[1].id 'ops' is declared twice"),
        (
            SINK.replace("https://ops.example.com/", "http://127.0.0.1:9/"),
            "operator_events.sinks[0].url",
            "loopback",
        ),
        (
            SINK + "secret_env = 'OPS_SECRET'\n",
            "operator_events.sinks[0].secret_env",
            "OPS_SECRET is not set",
        ),
        ("[[tenants]]\nid = 'relay/operator'\n", "tenants[0].id", "relay's own tenant"),
        (
            "[operator_events]\nconsecutive_failure_count = -1\n",
            "operator_events.consecutive_failure_count",
            "greater than or equal to 0",
        ),
    ],
)
def test_operator_event_settings_are_checked_naming_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert info.value.key == key, info.value
    assert words in info.value.problem, info.value


def test_sinks_become_destinations_of_the_operator_tenant(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SINK + "topics = '*'\n"), env={})
    assert [t.id for t in settings.declared_tenants()] == ["relay/operator"]
    (sink,) = settings.declared_tenants()[0].destinations
    assert (sink.id, sink.topic_list) == ("ops", ["*"])
    assert load_settings(write(tmp_path, MINIMAL), env={}).operator_events.sinks == []
