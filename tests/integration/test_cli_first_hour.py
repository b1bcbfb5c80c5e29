"""Issue 21's stumbles of a new user, each as the user met it: real `relay` processes
with the options and directories a user would give them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from relay.db.engine import asyncpg_url

RELAY = [sys.executable, "-m", "relay"]
ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment with none of relay's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return {**env, **extra}


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> Any:
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=90, env=env, cwd=cwd
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def process(*args: str, env: dict[str, str]) -> AsyncIterator[Any]:
    proc = await asyncio.create_subprocess_exec(
        *RELAY, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=30)


async def read_until(proc: Any, pattern: str, seen: list[str], timeout: float = 60) -> str:
    """Lines of the process's output until one matches; the match's line."""
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "process ended before printing " + pattern + ":\n" + "".join(seen)
            seen.append(line)
            if re.search(pattern, line):
                return line


# Stumble 1: the quickstart's first publish went where nothing listened, and nothing
# said where the destination's secret was.


async def test_quickstart_ends_in_a_delivered_verified_webhook_printed_by_relay_listen(
    tmp_path: Path, database_url: str
) -> None:
    """The README's steps: `relay serve` with the dev config, `relay listen` (which finds
    the destination's generated secret itself and prints it), one publish: relay listen
    prints the delivery as verified. A delivery signed with another secret is refused."""
    readme = (ROOT / "README.md").read_text()
    assert "relay listen" in readme.split("## Test it")[0], "the quickstart uses relay listen"
    port, hook_port = free_port(), free_port()
    hook = f"http://127.0.0.1:{hook_port}/webhooks"
    config = tmp_path / "relay.toml"
    dev = (ROOT / "config" / "relay.toml").read_text()
    assert "http://127.0.0.1:8000/webhooks" in dev
    config.write_text(
        dev.replace("port = 3333", f"port = {port}").replace("http://127.0.0.1:8000/webhooks", hook)
    )
    env = clean_env(RELAY_CONFIG=str(config), RELAY_DATABASE_URL=database_url)
    async with process("serve", env=env) as serve, aiohttp.ClientSession() as http:
        seen: list[str] = []
        await read_until(serve, "relay serve on", seen)
        async with process("listen", hook, env=env) as listen:
            heard: list[str] = []
            await read_until(listen, "waiting for deliveries", heard)
            banner = "".join(heard)
            assert "demo/local-receiver" in banner
            secret = re.search(r"secret (whsec_\S+)", banner)
            assert secret, banner
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/publish",
                headers={"Authorization": "Bearer relay-dev-admin-key"},
                data='{"tenant_id": "demo", "topic": "user.created", "data": {"user_id": "u1"}}',
            ) as resp:
                assert resp.status == 202
                event_id = (await resp.json())["id"]
            line = await read_until(listen, "signature", heard)
            assert event_id in line and "user.created" in line
            assert "signature verified" in line, "".join(heard)
            await read_until(listen, '"user_id": "u1"', heard)

            # Signed with another secret: refused, and shown as such.
            from standardwebhooks import Webhook

            body = '{"forged": true}'
            headers = Webhook("whsec_" + "A" * 43 + "=").sign("msg_forged", _now(), body)
            forged = {
                "webhook-id": "msg_forged",
                "webhook-timestamp": str(int(_now().timestamp())),
                "webhook-signature": headers,
            }
            async with http.post(hook, data=body, headers=forged) as resp:
                assert resp.status == 401
            line = await read_until(listen, "msg_forged", heard)
            assert "NOT verified" in line
        # The secret printed is the one relay signs with: the standard verifier agrees.
        conn = await asyncpg.connect(asyncpg_url(database_url))
        try:
            kept = await conn.fetchval(
                "SELECT secret FROM relay.destinations WHERE id = 'local-receiver'"
            )
        finally:
            await conn.close()
        assert kept == secret.group(1)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# Stumble 2: operator commands depended on the current directory and made a database.


def test_operator_commands_elsewhere_create_nothing_and_say_where_they_looked(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (("stats",), ("events", "show", "evt_1"), ("replay", "--dry-run"), ("psql",)):
        result = run(*args, env=clean_env(), cwd=elsewhere)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "no relay database here" in result.stderr
        assert str(elsewhere / ".relay") in result.stderr  # where it looked
        assert "RELAY_HOME" in result.stderr and "--config" in result.stderr
        assert "relay serve" in result.stderr  # what creates one
        assert "Traceback" not in result.stderr
        assert list(elsewhere.iterdir()) == [], "an operator command created files"


async def test_data_directory_resolves_from_the_config_file_or_relay_home(
    tmp_path: Path,
) -> None:
    """`relay migrate` from one directory, `relay stats` from another: the same embedded
    database, found through --config (data_dir relative to the file) or RELAY_HOME."""
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "relay.toml").write_text('[database]\ndata_dir = "../data"\n')
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    config = str(home / "config" / "relay.toml")
    migrated = await asyncio.to_thread(
        run, "migrate", "--config", config, env=clean_env(), cwd=first
    )
    assert migrated.returncode == 0, migrated.stderr
    assert (home / "data" / "pgdata" / "PG_VERSION").is_file()
    assert list(first.iterdir()) == []
    stats = await asyncio.to_thread(run, "stats", env=clean_env(RELAY_HOME=str(home)), cwd=second)
    assert stats.returncode == 0, stats.stderr
    assert "outbox backlog" in stats.stdout
    assert stats.stderr == ""  # quiet: not a word about starting the embedded server
    assert list(second.iterdir()) == []


async def test_operator_commands_do_not_put_relay_into_a_database_without_it(
    tmp_path: Path, pg_server_url: str
) -> None:
    """A RELAY_DATABASE_URL that names some other database: relay stats says it has no
    relay schema, and leaves it so."""
    name = f"relay_not_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_url(pg_server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        from sqlalchemy.engine import make_url

        url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
        result = await asyncio.to_thread(
            run, "stats", env=clean_env(RELAY_DATABASE_URL=url), cwd=tmp_path
        )
        assert result.returncode == 1
        assert "has no relay schema" in result.stderr and "relay migrate" in result.stderr
        conn = await asyncpg.connect(asyncpg_url(url))
        try:
            assert not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = 'relay'")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# Stumble 3: --config only before the subcommand, no --version, noisy operator commands.


def test_global_options_before_or_after_the_command_version_and_quiet(
    tmp_path: Path, database_url: str
) -> None:
    config = tmp_path / "f.toml"
    config.write_text("")
    env = clean_env(RELAY_DATABASE_URL=database_url)
    for args in (
        ("stats", "--config", str(config)),
        ("--config", str(config), "stats"),
        ("stats", "--config", str(config), "--log-level", "WARNING"),
        ("events", "show", "nope", "--config", str(config)),
    ):
        result = run(*args, env=env, cwd=tmp_path)
        assert result.returncode in (0, 1), (args, result.stderr)
        assert result.stderr == "", (args, result.stderr)  # quiet: no INFO lines
    version = run("--version", env=env)
    assert version.returncode == 0 and re.fullmatch(r"relay \d+\.\d+\.\d+\S*\n", version.stdout)


# Stumble 4: check-config passed what serve refused; env errors blamed the file.


def test_check_config_refuses_what_serve_refuses_and_errors_name_their_source(
    tmp_path: Path,
) -> None:
    config = tmp_path / "f.toml"
    config.write_text("[server]\nport = 1\n")
    checked = run("check-config", str(config), env=clean_env())
    served = run("serve", "--config", str(config), env=clean_env())
    assert checked.returncode == served.returncode == 2
    assert "server.admin_api_key" in checked.stderr and "RELAY_ADMIN_API_KEY" in checked.stderr

    config.write_text('[server]\nadmin_api_key = "k"\n')
    assert run("check-config", str(config), env=clean_env()).returncode == 0
    for variable, value in (("RELAY_PORT", "abc"), ("RELAY_LOG_FORMAT", "xml")):
        result = run("check-config", str(config), env=clean_env(**{variable: value}))
        assert result.returncode == 2
        first = result.stderr.splitlines()[1]
        assert first.startswith(f"environment variable {variable}: "), result.stderr
        assert str(config) not in result.stderr


# Stumble 5: a taken port and a missing database.


def test_taken_port_is_one_line_and_nothing_starts(tmp_path: Path, database_url: str) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "relay.toml"
        config.write_text(f'[server]\nport = {port}\nadmin_api_key = "k"\n')
        env = clean_env(RELAY_CONFIG=str(config), RELAY_DATABASE_URL=database_url)
        result = run("serve", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"relay: cannot listen on 127.0.0.1:{port}: Address already in use (is another relay "
        "running?); stop it, or choose another port with server.port or RELAY_PORT"
    ], result.stderr
    assert "dispatcher" not in result.stderr and "relay serve on" not in result.stderr


def test_missing_database_says_how_to_create_it_and_never_claims_to_serve(
    tmp_path: Path, pg_server_url: str
) -> None:
    from sqlalchemy.engine import make_url

    missing = f"relay_missing_{uuid.uuid4().hex[:8]}"
    url = make_url(pg_server_url).set(database=missing)
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nport = {free_port()}\nadmin_api_key = "k"\n')
    env = clean_env(
        RELAY_CONFIG=str(config), RELAY_DATABASE_URL=url.render_as_string(hide_password=False)
    )
    for command in ("serve", "stats"):
        result = run(command, env=env)
        assert result.returncode == 1, result.stderr
        [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("relay:")]
        assert f"database '{missing}' does not exist" in line
        host = url.host or url.query["host"]  # the embedded server: its socket directory
        assert f"createdb -h {host} -p {url.port or 5432}" in line and missing in line
        assert "relay serve on" not in result.stderr and "Traceback" not in result.stderr


async def test_relay_listen_verifies_outpost_mode_deliveries(
    tmp_path: Path, database_url: str
) -> None:
    """A destination in Outpost's default mode (x-outpost-signature: v0=<hex>): relay
    listen verifies it with the secret relay generated for that format."""
    port, hook_port = free_port(), free_port()
    hook = f"http://127.0.0.1:{hook_port}/in"
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
port = {port}
admin_api_key = "k"
[delivery]
allow_private_networks = ["127.0.0.0/8"]
[[tenants]]
id = "t"
[[tenants.destinations]]
id = "op"
url = "{hook}"
webhook_mode = "outpost"
"""
    )
    env = clean_env(RELAY_CONFIG=str(config), RELAY_DATABASE_URL=database_url)
    async with process("serve", env=env) as serve, aiohttp.ClientSession() as http:
        await read_until(serve, "relay serve on", [])
        async with process("listen", hook, env=env) as listen:
            heard: list[str] = []
            await read_until(listen, "waiting for deliveries", heard)
            assert "t/op (outpost webhooks), secret whsec_" in "".join(heard)
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/publish",
                headers={"Authorization": "Bearer k"},
                json={"tenant_id": "t", "topic": "a.b", "data": {"n": 1}},
            ) as resp:
                assert resp.status == 202
            line = await read_until(listen, "signature", heard)
            assert "signature verified (outpost, t/op's secret)" in line, "".join(heard)
