"""The chaos harness: a PostgreSQL it owns, relay's CLI processes, verifying receivers,
producers that publish at a steady rate, and slow or malformed clients.

relay runs as users run it: ``python -m relay --config <file> api|dispatch|serve`` with
the default settings (so uvloop, the default retry schedule, lease and concurrency caps).
The harness sets only what it must: ``RELAY_DATABASE_URL`` (a PgServer it can stop and
crash), an admin key, a port, the tenant, its destinations and a pod publisher pointing
at its receivers, and ``delivery.allow_private_networks = ["127.0.0.0/8"]``; for
``relay dispatch``, a free health port (several dispatchers share one machine). A
scenario that needs more to finish in bounded time (a short retry schedule, lease or
client timeout) passes it in ``delivery`` or ``server`` and says why.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.pgserver import PgServer

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "chaos-admin-key"
POD_KEY = "chaos-pod-key"
TENANT = "acme"
POD = "https://acme.example.com/profile/card#me"
# A short pod URL, so that a 14,000-item pod array fits in the default 1 MiB body limit.
SHORT_POD = "https://p.io/#me"
# Topics: most events go everywhere; "rare" ones also reach the failing and hanging
# destinations (so that their retries stay a bounded load).
TOPIC = "chaos.event"
RARE_TOPIC = "chaos.rare"
POD_TOPIC = "chaos/event#add"
POD_RARE_TOPIC = "chaos/rare#add"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


# --- receivers -----------------------------------------------------------------------

BEHAVIOURS = ("ok", "failing", "hanging", "slow", "flaky")


@dataclass
class Arrival:
    event_id: str
    at: float  # time.time() when the request arrived
    valid: bool  # Standard Webhooks signature verified
    status: int  # what the receiver answered (0: never answered, a hanging receiver)


class ChaosReceiver:
    """A real HTTP server for one destination. It verifies every delivery's signature
    and records (event id, arrival); it answers as its behaviour says:

    ok 200 · failing 500 · hanging never (until the harness ends; relay's timeout is 5 s)
    · slow 200 after 1-2 s · flaky 500 on the first try of about a third of the events.
    """

    def __init__(self, name: str, behaviour: str, topics: list[str] | str = "*") -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.name = name
        self.behaviour = behaviour
        self.topics = topics
        self.secret = new_secret()
        self._verifier = Webhook(self.secret)
        self.arrivals: list[Arrival] = []
        self.first_ok: dict[str, float] = {}
        self._tries: Counter[str] = Counter()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def healthy(self) -> bool:
        """Every event routed here must end up delivered (flaky ones after a retry)."""
        return self.behaviour in ("ok", "slow", "flaky")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{self.name}"

    def routes(self, topic: str) -> bool:
        if self.topics == "*":
            return True
        return topic in self.topics or topic.split("#", 1)[0] in self.topics

    def _answer(self, event_id: str) -> int:
        self._tries[event_id] += 1
        if self.behaviour == "failing":
            return 500
        if self.behaviour == "flaky":
            first = self._tries[event_id] == 1
            return 500 if first and zlib.crc32(event_id.encode()) % 3 == 0 else 200
        return 200

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        event_id = request.headers.get("webhook-id", "")
        try:
            self._verifier.verify(body, dict(request.headers), json_parse=False)
            valid = True
        except WebhookVerificationError:
            valid = False
        now = time.time()
        if not valid:
            self.arrivals.append(Arrival(event_id, now, False, 401))
            return web.Response(status=401, text="bad signature")
        if self.behaviour == "hanging":
            self.arrivals.append(Arrival(event_id, now, True, 0))
            await self._release.wait()
            return web.Response(status=503, text="released")
        status = self._answer(event_id)
        self.arrivals.append(Arrival(event_id, now, True, status))
        if status == 200:
            self.first_ok.setdefault(event_id, now)
        if self.behaviour == "slow":
            await asyncio.sleep(1 + zlib.crc32(event_id.encode()) % 1000 / 1000)
        return web.Response(status=status, text="ok" if status == 200 else "failing")

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/hook/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# --- relay processes -----------------------------------------------------------------


def write_config(
    path: Path,
    port: int,
    receivers: Iterable[ChaosReceiver],
    delivery: dict[str, Any],
    server: dict[str, Any] | None = None,
) -> Path:
    """The TOML file: what the harness must set, plus the scenario's ``delivery`` and
    ``server`` keys."""

    def value(v: Any) -> str:
        return orjson.dumps(v).decode()

    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f"admin_api_key = {value(ADMIN_KEY)}",
        *(f"{k} = {value(v)}" for k, v in (server or {}).items()),
        "",
        "[delivery]",
        'allow_private_networks = ["127.0.0.0/8"]',
    ]
    retry = dict(delivery.get("retry", {}))
    lines += [f"{k} = {value(v)}" for k, v in delivery.items() if k != "retry"]
    if retry:
        lines += ["", "[delivery.retry]", *(f"{k} = {value(v)}" for k, v in retry.items())]
    lines += ["", "[[tenants]]", f"id = {value(TENANT)}", f"pods = {value([POD, SHORT_POD])}"]
    for r in receivers:
        lines += [
            "",
            "[[tenants.destinations]]",
            f"id = {value(r.name)}",
            f"url = {value(r.url)}",
            f"topics = {value(r.topics)}",
            f"secret = {value(r.secret)}",
        ]
    lines += [
        "",
        "[[publishers]]",
        'name = "chaos-producer"',
        f"key = {value(POD_KEY)}",
        'grants = [{ recipients = "*", topics = ["chaos/*"] }]',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _relay_env(database_url: str) -> dict[str, str]:
    # Nothing of the caller's RELAY_* settings leaks in: defaults, plus the database.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATABASE_URL"] = database_url
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    return env


def _proc_status(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


class RelayProcess:
    """One ``python -m relay --config FILE <command>`` process; output in a log file."""

    def __init__(
        self, name: str, command: str, config: Path, database_url: str, port: int, logs: Path
    ) -> None:
        self.name = name
        self.command = command
        self.config = config
        self.database_url = database_url
        self.port = port
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Peak RSS (VmHWM) of every incarnation, read before each ends.
        self.peak_rss = 0
        self.loop = "?"
        self.incarnations = 0

    @property
    def serves_http(self) -> bool:
        return self.command in ("api", "serve")

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.incarnations += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.incarnations} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "--config", str(self.config), self.command],
                cwd=REPO,
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _env(self) -> dict[str, str]:
        env = _relay_env(self.database_url)
        if self.command == "dispatch":
            # Each dispatcher on one machine needs a health port of its own (3334 by
            # default), and other relay processes on this machine may hold that one.
            env["RELAY_HEALTH_PORT"] = str(free_port())
        return env

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample(self) -> None:
        """Read the peak RSS so far (VmHWM) and which event loop the process runs."""
        if not self.alive:
            return
        hwm = _proc_status(self.pid, "VmHWM")
        if hwm:
            self.peak_rss = max(self.peak_rss, hwm)
        with contextlib.suppress(OSError):
            maps = Path(f"/proc/{self.pid}/maps").read_text()
            # Empty once the process is exiting; uvloop, once loaded, stays the loop.
            if maps and self.loop != "uvloop":
                self.loop = "uvloop" if "uvloop/loop" in maps else "asyncio"

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while True:
                assert self.alive, f"{self.name} exited:\n{self.log[-4000:]}"
                if self.serves_http:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.get(
                            f"http://127.0.0.1:{self.port}/healthz",
                            timeout=aiohttp.ClientTimeout(total=2),
                        ) as resp:
                            if resp.status == 200:
                                break
                elif "relay dispatch running" in self.log.rsplit("--- start #", 1)[-1]:
                    break
                await asyncio.sleep(0.1)
        self.sample()

    def kill9(self) -> None:
        self.sample()
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    async def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM, as an operator stops relay; SIGKILL if it outlives ``timeout``."""
        self.sample()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stats(self) -> dict[str, int]:
        """The last ``dispatcher stopped: claimed=... delivered=...`` line's figures."""
        found = re.findall(r"dispatcher stopped: (.*)", self.log)
        if not found:
            return {}
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found[-1])}


# --- producers -----------------------------------------------------------------------


@dataclass
class Answer:
    """One publish request's fate: an HTTP status, or an error with no answer."""

    producer: str
    event_id: str
    at: float  # time.time() when the answer (or the error) came
    status: int | None
    retry_after: str | None = None
    error: str | None = None


@dataclass
class Published:
    event_id: str
    topic: str
    acked_at: float
    kind: str  # "outpost" | "pod" | "poison"
    sent_at: float = 0.0  # the first try
    # What POST /api/v1/publish answered (outpost kind only): a 202 routed nowhere is no
    # refusal (Outpost's answer for an unknown tenant or destination), so it is checked.
    destination_ids: list[str] | None = None


class Producer:
    """Publishes at a steady rate (open loop: one request every 1/rate s, whatever the
    answers) and retries an unacknowledged request until it is acknowledged or the
    producer gives up. Outpost requests carry an explicit id, so a retry is idempotent;
    the pod API assigns ids, so a pod retry is a new event (as it is for a real client).
    """

    def __init__(self, kind: str, base_url: str, prefix: str, rate: float) -> None:
        assert kind in ("outpost", "pod")
        self.kind = kind
        self.base_url = base_url
        self.prefix = prefix
        self.rate = rate
        self.acked: dict[str, Published] = {}
        self.answers: list[Answer] = []
        self.refused: list[Answer] = []  # a 4xx for a normal request: never expected
        self.gave_up: list[str] = []  # never acknowledged, though retried until give_up
        self.sent = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _request(self, n: int) -> tuple[str, str, dict[str, str], bytes]:
        rare = n % 4 == 3
        data = {"n": n, "producer": self.prefix, "text": "héllo wörld ✓", "at": time.time()}
        if self.kind == "outpost":
            event_id = f"{self.prefix}-{n:06d}"
            topic = RARE_TOPIC if rare else TOPIC
            body = {"id": event_id, "tenant_id": TENANT, "topic": topic, "data": data}
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            return "/api/v1/publish", topic, headers, orjson.dumps(body)
        topic = POD_RARE_TOPIC if rare else POD_TOPIC
        body = [{"recipient": POD, "topic": topic, "data": data}]
        return "/publish/", topic, {"x-api-key": POD_KEY}, orjson.dumps(body)

    async def _publish(self, http: aiohttp.ClientSession, n: int, give_up: float) -> None:
        path, topic, headers, body = self._request(n)
        name = f"{self.prefix}-{n:06d}"
        delay = 0.2
        sent_at = time.time()
        while time.time() < give_up:
            try:
                async with http.post(
                    self.base_url + path,
                    data=body,
                    headers=headers | {"Content-Type": "application/json"},
                ) as resp:
                    payload = await resp.read()
                    now = time.time()
                    if resp.status in (201, 202):
                        event_id, routed = name, None
                        if self.kind == "pod":
                            event_id = orjson.loads(payload)["id"].rsplit("/", 1)[-1]
                        else:
                            routed = orjson.loads(payload)["destination_ids"]
                        self.acked[event_id] = Published(
                            event_id, topic, now, self.kind, sent_at, routed
                        )
                        return
                    answer = Answer(
                        self.kind, name, now, resp.status, resp.headers.get("Retry-After")
                    )
                    self.answers.append(answer)
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        self.refused.append(answer)
                        return
                    if resp.headers.get("Retry-After", "").isdigit():
                        delay = min(float(resp.headers["Retry-After"]), 2.0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.answers.append(Answer(self.kind, name, time.time(), None, error=repr(exc)))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.gave_up.append(name)

    async def run(self, http: aiohttp.ClientSession, seconds: float, retry_for: float) -> None:
        """Publish for ``seconds``; then let unacknowledged requests retry ``retry_for``."""
        started = time.monotonic()
        give_up = time.time() + seconds + retry_for
        n = 0
        while time.monotonic() - started < seconds:
            task = asyncio.create_task(self._publish(http, n, give_up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
            self.sent = n
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
        if self._tasks:
            await asyncio.gather(*self._tasks)


# --- raw HTTP (bytes no client library would send) -------------------------------------


@dataclass
class RawAnswer:
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None = None

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


async def raw_request(
    port: int,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    timeout: float = 60,
) -> RawAnswer:
    """One HTTP/1.1 request written byte for byte (header values need not be UTF-8)."""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    head.append(b"Content-Length: " + str(len(body)).encode())
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
            writer.write(request)
            await writer.drain()
            data = await reader.read()
    except (OSError, TimeoutError) as exc:
        return RawAnswer(None, {}, b"", repr(exc))
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return RawAnswer(None, {}, data, "no HTTP answer")
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        parsed[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    return RawAnswer(status, parsed, rest)


def _unchunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


# --- slow clients --------------------------------------------------------------------


@dataclass
class SlowClient:
    """A connection that trickles its request (headers or body) one byte at a time."""

    index: int
    mode: str  # "headers" | "body"
    opened_at: float = 0.0
    # When the server ended it (closed, or answered), and how; None: it never did.
    ended_at: float | None = None
    how: str = ""

    async def run(self, port: int, interval: float, until: float) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.opened_at = self.ended_at = time.time()
            self.how = f"connect failed: {exc!r}"
            return
        self.opened_at = time.time()
        if self.mode == "headers":
            start = b"POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            drip = b"X-Slow: " + b"a" * 10_000
        else:
            body = b'{"tenant_id": "acme", "topic": "chaos.event", "data": {}}'
            start = (
                b"POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
            drip = body + b" " * 100_000
        answer = asyncio.ensure_future(reader.read(1))
        try:
            writer.write(start)
            await writer.drain()
            for byte in drip:
                if time.time() >= until:
                    return
                done, _ = await asyncio.wait({answer}, timeout=interval)
                if done:
                    got = answer.result()
                    self.ended_at = time.time()
                    self.how = "answered" if got else "closed"
                    return
                writer.write(bytes([byte]))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            self.ended_at = time.time()
            self.how = f"closed ({type(exc).__name__})"
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# --- the whole harness ---------------------------------------------------------------


@dataclass
class Window:
    """A disruption: [start, end] in time.time()."""

    what: str
    start: float
    end: float = 0.0


@dataclass
class Harness:
    """What a scenario runs against; ``async with Harness(name, workdir) as h``."""

    name: str
    workdir: Path
    pg: PgServer | None = None
    receivers: list[ChaosReceiver] = field(default_factory=list)
    processes: list[RelayProcess] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    config: Path | None = None
    port: int = 0
    http: aiohttp.ClientSession | None = None
    t0: float = field(default_factory=time.time)
    notes: list[str] = field(default_factory=list)  # a scenario's figures for the report
    stopped_at: float = 0.0
    _sampler: asyncio.Task[None] | None = None

    @property
    def database_url(self) -> str:
        assert self.pg is not None
        return self.pg.url("postgres")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Harness:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pg = PgServer()
        await asyncio.to_thread(self.pg.__enter__)
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=20),
            connector=aiohttp.TCPConnector(limit=200),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        for process in self.processes:
            if process.alive:
                process.kill9()
        for receiver in self.receivers:
            await receiver.close()
        if self.http is not None:
            await self.http.close()
        if self.pg is not None:
            await asyncio.to_thread(self.pg.cleanup)

    async def receiver(self, name: str, behaviour: str, topics: list[str] | str = "*") -> None:
        r = ChaosReceiver(name, behaviour, topics)
        await r.start()
        self.receivers.append(r)

    def configure(
        self, delivery: dict[str, Any] | None = None, server: dict[str, Any] | None = None
    ) -> Path:
        self.port = free_port()
        self.config = write_config(
            self.workdir / "relay.toml", self.port, self.receivers, delivery or {}, server
        )
        return self.config

    async def start(self, *commands: str) -> list[RelayProcess]:
        """Start processes (``"api"``, ``"dispatch"``, ``"serve"``) and wait until ready."""
        assert self.config is not None and self.http is not None
        started = []
        for command in commands:
            n = sum(1 for p in self.processes if p.command == command)
            name = command if command != "dispatch" else f"dispatch-{n}"
            process = RelayProcess(
                name, command, self.config, self.database_url, self.port, self.workdir
            )
            self.processes.append(process)
            started.append(process)
            # One at a time: the first migrates, the others find the schema ready.
            process.start()
            await process.ready(self.http)
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample())
        return started

    async def _sample(self) -> None:
        while True:
            for process in self.processes:
                process.sample()
            await asyncio.sleep(0.25)

    def producer(self, kind: str, rate: float) -> Producer:
        prefix = f"{self.name}-{kind}-{len(self.producers)}"
        p = Producer(kind, self.base_url, prefix, rate)
        self.producers.append(p)
        return p

    async def produce(self, seconds: float, retry_for: float = 30.0) -> None:
        assert self.http is not None
        await asyncio.gather(*(p.run(self.http, seconds, retry_for) for p in self.producers))

    def api_processes(self) -> list[RelayProcess]:
        return [p for p in self.processes if p.serves_http]

    def dispatch_processes(self) -> list[RelayProcess]:
        return [p for p in self.processes if p.command in ("dispatch", "serve")]

    async def pg_stop(self, mode: str) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.stop, mode)

    async def pg_start(self) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.start)

    async def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every relay process at once (the default grace period applies)."""
        self.stopped_at = time.time()
        codes = await asyncio.gather(*(p.terminate() for p in self.processes))
        return {p.name: c for p, c in zip(self.processes, codes, strict=True)}

    def acked(self) -> dict[str, Published]:
        out: dict[str, Published] = {}
        for p in self.producers:
            out.update(p.acked)
        return out

    def answers(self) -> list[Answer]:
        return [a for p in self.producers for a in p.answers]


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> Any:
    """An awaitable that returns True once ``predicate()`` holds, False at the deadline."""

    async def poll() -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(step)
        return True

    return poll()
