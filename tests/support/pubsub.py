"""Google's own Pub/Sub emulator, started by the tests that need it.

It comes with the Debian package google-cloud-cli-pubsub-emulator (from Google's apt
repository; on the development and CI machines' image), runs on Java, and keeps topics,
subscriptions and messages in memory. It checks no credentials, as Outpost's gcp_pubsub
type expects of an ``endpoint``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.relay import free_port

LAUNCHER = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
PACKAGE = "google-cloud-cli-pubsub-emulator"
# The port opens before the gRPC server is ready; this line says it is.
READY = b"Server started"


class PubSubEmulator:
    """``with PubSubEmulator(log) as emulator``: ``emulator.endpoint`` is its host:port."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def skip_unless_installed() -> None:
        if not LAUNCHER.exists():
            pytest.skip(
                f"Google's Pub/Sub emulator is not installed ({LAUNCHER} is missing): "
                f"apt-get install {PACKAGE} (Google's Cloud SDK apt repository)"
            )
        if shutil.which("java") is None:
            pytest.skip(
                f"the Pub/Sub emulator ({PACKAGE}) needs Java: apt-get install openjdk-17-jre"
            )

    def start(self, timeout: float = 60) -> PubSubEmulator:
        self.skip_unless_installed()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(LAUNCHER), "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # A small heap and the quick compiler: it holds a few messages per test.
                env=os.environ | {"JAVA_OPTS": "-Xmx256m -XX:TieredStopAtLevel=1"},
            )
        deadline = time.monotonic() + timeout
        while READY not in self.log_path.read_bytes():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Pub/Sub emulator did not start: {self.log()}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def __enter__(self) -> PubSubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
