"""A stand-in for Azure Service Bus: an AMQP 1.0 broker (python-qpid-proton) that speaks
enough of Service Bus for azure-servicebus's send path, so that relay's azure_servicebus
destinations are tested end to end with the real client where no Service Bus can run
(Microsoft's emulator ships only as a Docker image).

What it does, as Service Bus does:

- SASL (ANONYMOUS or PLAIN), then claims-based security: the client puts its SAS token on
  the ``$cbs`` node, and the stand-in checks it against its keys (the signature is base64
  HMAC-SHA256, keyed by the key, of the url-encoded resource, a newline and the expiry)
  and answers 202, 401 (a wrong key or key name, or an expired token) or 404 (no queue or
  topic of that name).
- A sender link to an unknown queue is attached and then detached with amqp:not-found.
- A message sent to a queue is stored and settled as accepted; tests read it with take().

What it does not do: topics' subscriptions and filters, sessions, TTL, duplicate
detection, size quotas (it advertises 256 KiB, the standard tier's maximum, no more),
throttling, receivers, TLS. The client reaches it with a development connection string
(``UseDevelopmentEmulator=true``: plain AMQP on the endpoint's port), as it reaches
Microsoft's emulator.

The proton container runs in a thread of its own; what tests call locks the state it
shares with that thread.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import threading
import time
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlparse

from proton import Condition, Message
from proton.handlers import MessagingHandler
from proton.reactor import ApplicationEvent, Container, EventInjector

from tests.support.relay import free_port

KEY_NAME = "RootManageSharedAccessKey"
MAX_MESSAGE_SIZE = 256 * 1024


def entity(address: str | None) -> str:
    """The queue an address names: ``amqp://host/events``, ``events`` or
    ``events/subscriptions/x`` are all ``events``."""
    if not address:
        return ""
    if "://" in address:
        address = urlparse(address).path.lstrip("/")
    return address.split("/subscriptions/")[0]


def signature(key: str, resource: str, expiry: str) -> str:
    """A SAS token's signature, as Service Bus computes it."""
    to_sign = (quote_plus(resource) + "\n" + expiry).encode()
    return base64.b64encode(hmac.new(key.encode(), to_sign, hashlib.sha256).digest()).decode()


class ServiceBusStandIn(MessagingHandler):  # type: ignore[misc]
    """``with ServiceBusStandIn(queues={"events"}, keys={KEY_NAME: "..."}) as bus``."""

    def __init__(self, queues: set[str], keys: dict[str, str], host: str = "127.0.0.1") -> None:
        super().__init__(auto_accept=False)
        self.host, self.port = host, free_port()
        self.keys = keys
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Message]] = {
            q: collections.deque() for q in queues
        }
        # Every put-token seen: its name (the audience), type and token.
        self.tokens: list[dict[str, Any]] = []
        # Per connection, the link that carries $cbs answers back to the client.
        self._cbs_replies: dict[Any, Any] = {}
        # Links to unknown queues, detached once proton has opened them.
        self._refused: dict[Any, str] = {}
        self._connections: set[Any] = set()
        self._ready = threading.Event()
        self._container = Container(self)
        self._injector = EventInjector()
        self._container.selectable(self._injector)
        self._thread = threading.Thread(target=self._container.run, daemon=True)
        self._acceptor: Any = None

    def connection_string(self, key: str | None = None, key_name: str = KEY_NAME) -> str:
        """What a destination's ``credentials.connection_string`` holds to reach it."""
        key = self.keys[key_name] if key is None else key
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={key_name};"
            f"SharedAccessKey={key};UseDevelopmentEmulator=true;"
        )

    # --- what tests call ----------------------------------------------------------------

    def add_queue(self, name: str) -> None:
        with self._lock:
            self._queues.setdefault(name, collections.deque())

    def take(self, name: str) -> Message | None:
        """The oldest message on the queue, removed; None when it has none."""
        with self._lock:
            queue = self._queues.get(name)
            return queue.popleft() if queue else None

    def start(self) -> ServiceBusStandIn:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Service Bus stand-in did not start")
        return self

    def stop(self) -> None:
        """Close the listener and every connection, from the container's own thread (a
        stop called from another thread leaves the port open)."""
        if self._thread.is_alive():
            self._injector.trigger(ApplicationEvent("shutdown"))
            self._thread.join(10)

    def __enter__(self) -> ServiceBusStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- proton's events (the container's thread) ---------------------------------------

    def on_start(self, event: Any) -> None:
        self._acceptor = event.container.listen(f"{self.host}:{self.port}")
        self._ready.set()

    def on_shutdown(self, event: Any) -> None:
        self._acceptor.close()
        for connection in list(self._connections):
            connection.close()
        self._injector.close()
        self._container.stop()

    def on_connection_opened(self, event: Any) -> None:
        self._connections.add(event.connection)

    def on_connection_closed(self, event: Any) -> None:
        self._connections.discard(event.connection)

    def _known(self, name: str) -> bool:
        with self._lock:
            return name in self._queues

    def on_link_opening(self, event: Any) -> None:
        link = event.link
        if link.is_sender:  # the client receives on it: only $cbs answers
            link.source.address = link.remote_source.address
            if link.remote_source.address == "$cbs":
                self._cbs_replies[event.connection] = link
            else:
                self._refused[link] = entity(link.remote_source.address)
            return
        address = link.remote_target.address
        link.target.address = address
        link.max_message_size = MAX_MESSAGE_SIZE
        if address != "$cbs" and not self._known(entity(address)):
            self._refused[link] = entity(address)

    def on_link_opened(self, event: Any) -> None:
        # Service Bus answers the attach, then detaches: proton opens the link itself once
        # on_link_opening returns, so the detach is sent from here.
        name = self._refused.pop(event.link, None)
        if name is not None:
            event.link.condition = Condition(
                "amqp:not-found", f"The messaging entity '{name}' could not be found."
            )
            event.link.close()

    def on_message(self, event: Any) -> None:
        link, message = event.link, event.message
        if link.target.address == "$cbs":
            self._put_token(event, message)
            return
        name = entity(link.target.address)
        with self._lock:
            queue = self._queues.get(name)
            if queue is not None:
                queue.append(message)
        if queue is None:  # the queue was there when the link was made
            event.delivery.local.condition = Condition(
                "amqp:not-found", f"The messaging entity '{name}' could not be found."
            )
            self.reject(event.delivery)
        else:
            self.accept(event.delivery)

    def _put_token(self, event: Any, message: Message) -> None:
        properties = message.properties or {}
        audience = str(properties.get("name") or "")
        token = str(message.body)
        self.tokens.append({"name": audience, "type": properties.get("type"), "token": token})
        status, description = self._check(audience, token)
        self.accept(event.delivery)
        reply = self._cbs_replies.get(event.connection)
        if reply is not None:
            reply.send(
                Message(
                    correlation_id=message.id,
                    properties={"status-code": status, "status-description": description},
                )
            )

    def _check(self, audience: str, token: str) -> tuple[int, str]:
        fields = {
            k: v[0] for k, v in parse_qs(token.removeprefix("SharedAccessSignature ")).items()
        }
        key = self.keys.get(fields.get("skn", ""))
        if key is None or "sr" not in fields or "se" not in fields:
            return 401, "InvalidSignature: The token has an invalid signature."
        if not hmac.compare_digest(
            signature(key, fields["sr"], fields["se"]), fields.get("sig", "")
        ):
            return 401, "InvalidSignature: The token has an invalid signature."
        if int(fields["se"]) < time.time():
            return 401, "ExpiredToken: The token is expired."
        if not self._known(entity(audience)):
            return 404, f"The messaging entity '{audience}' could not be found."
        return 202, "Accepted"
