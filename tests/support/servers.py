"""Servers the destination tests start from the machine's own binaries (nats-server,
redis-server): found on PATH or in /usr/sbin, started on a port of their own, waited for
until they listen, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def binary(name: str, package: str) -> str:
    """The binary's path; skips the test, naming the Debian package, when it is absent."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install {package})")
    return found


@contextmanager
def listening(argv: Sequence[str], port: int, log: Path) -> Iterator[None]:
    """Run ``argv`` (its output to ``log``) until it listens on HOST:port; stop it after."""
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"{argv[0]} did not start: {log.read_text()}") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        server.terminate()
        server.wait(10)
