"""The relay command as users run it: a real process, a real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.receiver import Receiver

RELAY = [sys.executable, "-m", "relay"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [*RELAY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_config_accepts_a_good_file(repo_root: Path) -> None:
    result = run("check-config", str(repo_root / "config" / "relay.toml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_bad_config_stops_the_start_with_the_key_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tenants]]\nid = 'a'\n[[tenants.destinations]]\nid = 'd'\nurl = 'ftp://x'\n")
    for args in (("check-config", str(bad)), ("--config", str(bad), "serve")):
        result = run(*args)
        assert result.returncode == 2
        assert str(bad) in result.stderr
        assert "tenants[0].destinations[0].url" in result.stderr
        assert "fix:" in result.stderr
        assert "Traceback" not in result.stderr


def test_serve_without_admin_key_says_how_to_set_one(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[server]\nport = 1\n")
    result = run("--config", str(config), "serve")
    assert result.returncode == 2
    assert "server.admin_api_key" in result.stderr
    assert "RELAY_ADMIN_API_KEY" in result.stderr


async def test_zero_setup_serve_delivers_and_psql_shows_the_history(tmp_path: Path) -> None:
    """No database configured: `relay serve` starts an embedded PostgreSQL in the data
    directory, a publish reaches the receiver, and psql on that server shows the event,
    its outbox row and the attempt. SIGTERM stops relay cleanly."""
    async with Receiver() as receiver:
        port = free_port()
        config = tmp_path / "relay.toml"
        config.write_text(
            f"""
[server]
port = {port}
admin_api_key = "cli-test-key"

[database]
data_dir = "{tmp_path / "data"}"

[delivery]
allow_private_networks = ["127.0.0.0/8"]

[[tenants]]
id = "demo"

[[tenants.destinations]]
id = "local"
url = "{receiver.url("/in")}"
"""
        )
        env = {**os.environ, "RELAY_CONFIG": str(config)}
        env.pop("RELAY_DATABASE_URL", None)
        process = await asyncio.create_subprocess_exec(
            *RELAY, "serve", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{port}"
                await _wait_healthy(http, base)
                async with http.post(
                    f"{base}/api/v1/publish",
                    json={"tenant_id": "demo", "topic": "hello", "data": {"hi": 1}},
                    headers={"Authorization": "Bearer cli-test-key"},
                ) as resp:
                    assert resp.status == 202
                    event_id = (await resp.json())["id"]
                [request] = await receiver.wait_for(1)
                assert request.json() == {"hi": 1}

            # The attempt row is written right after the answer: look until it is there
            # (a loaded machine may take a while), not after a fixed sleep.
            async with asyncio.timeout(30):
                while True:
                    psql = await asyncio.to_thread(
                        run,
                        "psql",
                        "--",
                        "-At",
                        "-c",
                        "SELECT e.id, d.status, a.status, a.http_status FROM relay.events e "
                        "JOIN relay.deliveries d ON d.event_seq = e.seq "
                        "JOIN relay.attempts a ON a.delivery_id = d.id",
                        env={"RELAY_CONFIG": str(config)},
                    )
                    assert psql.returncode == 0, psql.stderr
                    if psql.stdout.strip():
                        break
                    await asyncio.sleep(0.1)
            assert psql.stdout.strip() == f"{event_id}|delivered|success|200"
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, output.decode()[-2000:]
        assert b"Traceback" not in output
        # The last relay process to exit stopped the embedded server.
        assert not (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()


async def _wait_healthy(http: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def test_unreachable_database_stops_the_start_with_a_message(tmp_path: Path) -> None:
    """Nothing listens at the configured server: relay retries for
    database.startup_wait_seconds, then exits 1 with a message that says what to check."""
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nadmin_api_key = "k"\n')
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    for command in ("serve", "dispatch"):
        result = run(
            "--config",
            str(config),
            command,
            env={"RELAY_DATABASE_URL": url, "RELAY_DATABASE_STARTUP_WAIT_SECONDS": "1.5"},
        )
        assert result.returncode == 1, result.stderr
        assert "database unreachable for 1.5s at start" in result.stderr
        assert "RELAY_DATABASE_URL" in result.stderr
        assert "retrying in" in result.stderr  # it did wait before giving up
        assert "Traceback" not in result.stderr


async def test_serve_waits_for_a_database_that_starts_late(tmp_path: Path) -> None:
    """relay started before its PostgreSQL (compose files, reboots) comes up once the
    server does, instead of crashing."""
    from tests.support.pgserver import PgServer

    pg = PgServer()
    try:
        await asyncio.to_thread(pg.init)
        port = free_port()
        config = tmp_path / "relay.toml"
        config.write_text(f'[server]\nport = {port}\nadmin_api_key = "k"\n')
        env = {**os.environ, "RELAY_CONFIG": str(config), "RELAY_DATABASE_URL": pg.url()}
        process = await asyncio.create_subprocess_exec(
            *RELAY, "serve", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        seen = b""
        try:
            # Start the database only once relay has found it missing (not after a fixed
            # sleep: on a loaded machine relay may take longer than that to get there).
            assert process.stdout is not None
            async with asyncio.timeout(30):
                while b"database unreachable" not in seen:
                    line = await process.stdout.readline()
                    assert line, f"relay exited before the database came up:\n{seen!r}"
                    seen += line
            await asyncio.to_thread(pg.start)
            async with aiohttp.ClientSession() as http:
                await _wait_healthy(http, f"http://127.0.0.1:{port}")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, (seen + output).decode()[-2000:]
    finally:
        await asyncio.to_thread(pg.cleanup)


async def test_workers_share_the_port_restart_and_stop_together(
    tmp_path: Path, database_url: str
) -> None:
    """server.workers = 3: three processes answer on one port; a copy that dies is started
    again; SIGTERM to the first stops them all, and it exits 0."""
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nport = {port}\nadmin_api_key = "k"\nworkers = 3\n[[tenants]]\nid = "t"\n'
    )
    env = {**os.environ, "RELAY_CONFIG": str(config), "RELAY_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        *RELAY, "api", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    def copies() -> list[int]:
        """The first process's children (the copies), from /proc."""
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == process.pid:
                    children.append(int(entry.name))
        return children

    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            await _wait_healthy(http, base)
            async with asyncio.timeout(30):
                while len(copies()) < 2:
                    await asyncio.sleep(0.2)
            ids = set()
            for n in range(30):
                async with http.post(
                    f"{base}/api/v1/publish",
                    json={"tenant_id": "t", "id": f"e{n}", "topic": "x", "data": {}},
                    headers={"Authorization": "Bearer k", "Connection": "close"},
                ) as resp:
                    assert resp.status == 202
                    ids.add((await resp.json())["id"])
            assert len(ids) == 30

            first = copies()
            os.kill(first[0], signal.SIGKILL)
            async with asyncio.timeout(30):
                while True:
                    now = copies()
                    if len(now) == 2 and first[0] not in now:
                        break
                    await asyncio.sleep(0.2)
            await _wait_healthy(http, base)
        survivors = copies()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, output.decode()[-2000:]
    assert b"exited with -9; starting it again" in output
    # The first process waited for its copies: none is left running.
    assert not [pid for pid in survivors if _running(pid)]


def _running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
