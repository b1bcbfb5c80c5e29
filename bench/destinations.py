"""Delivery throughput by destination type, in one run: a backlog drained by `relay
dispatch` (a separate process, as users run it) to a webhook receiver (bench/receiver.py)
and to RabbitMQ (127.0.0.1:5672, guest/guest), rounds interleaved, each figure beside
webhook's of the same round as a ratio. Timings are reported, never asserted.

    .venv/bin/python bench/destinations.py                  # 20,000 deliveries, 3 rounds
    .venv/bin/python bench/destinations.py --total 2000 --rounds 1

Both drains start from the same backlog (one destination, `bench/receiver`, the rows
written before the dispatcher starts; the config file makes the destination the type
measured) and are timed from the first finished delivery to the last, read from the
database: the same clock for every type.
"""

# (a benchmark driver: it blocks on purpose while processes run)
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run_all as bench
from tests.support.pgserver import PgServer

RABBITMQ = ("127.0.0.1", 5672)
TYPES = ("webhook", "rabbitmq")


def destination_lines(kind: str, receiver_port: int, exchange: str) -> list[str]:
    if kind == "webhook":
        return [
            f'url = "http://127.0.0.1:{receiver_port}/hook"',
            f'secret = "{bench.SECRET}"',
        ]
    host, port = RABBITMQ
    return [
        'type = "rabbitmq"',
        f'config = {{ server_url = "{host}:{port}", exchange = "{exchange}" }}',
        'credentials = { username = "guest", password = "guest" }',
    ]


def config(url: str, kind: str, receiver_port: int, exchange: str) -> Path:
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f'admin_api_key = "{bench.ADMIN_KEY}"',
        "health_port = 0",
        "[database]",
        f'url = "{url}"',
        "[delivery]",
        'allow_private_networks = ["127.0.0.0/8"]',
        *(f"{k} = {v}" for k, v in bench.DISPATCH_SETTINGS.items()),
        "[[tenants]]",
        'id = "bench"',
        "[[tenants.destinations]]",
        'id = "receiver"',
        'topics = "*"',
        *destination_lines(kind, receiver_port, exchange),
    ]
    bench.OUT.mkdir(exist_ok=True)
    path = bench.OUT / f"relay-{kind}-{uuid.uuid4().hex[:8]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def drain(b: bench.Bench, kind: str, total: int, receiver_port: int, exchange: str) -> float:
    url = await b.fresh_db()
    await bench.seed_relay(url, receiver_port, pending=total)
    conn = await asyncpg.connect(url)
    command = [bench.RELAY, "--config", str(config(url, kind, receiver_port, exchange)), "dispatch"]
    try:
        with bench.process(command, log=f"destinations-{kind}"):
            deadline = time.monotonic() + 600
            while not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM relay.deliveries_finished)"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing delivered to {kind} (see bench/out/)")
                await asyncio.sleep(0.01)
            start = time.monotonic()
            while await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM relay.deliveries "
                "WHERE status IN ('pending', 'delivering'))"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the drain to {kind} did not finish in time")
                await asyncio.sleep(0.05)
            span = time.monotonic() - start
        failed = await conn.fetchval(
            "SELECT count(*) FROM relay.attempts WHERE status <> 'success'"
        )
        if failed:
            raise RuntimeError(f"{failed} failed attempts to {kind} (see bench/out/)")
    finally:
        await conn.close()
    return total / span


async def run(args: argparse.Namespace) -> None:
    exchange = f"relay-bench-{uuid.uuid4().hex[:8]}"
    amqp = await aio_pika.connect(f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/")
    channel = await amqp.channel()
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    # A bound queue that keeps the last 10,000: the broker does the work of routing and
    # storing each message, and its memory stays bounded.
    queue = await channel.declare_queue(
        exclusive=True, arguments={"x-max-length": 10_000, "x-overflow": "drop-head"}
    )
    await queue.bind(ex, routing_key="#")
    pg = PgServer()
    rates: dict[str, list[float]] = {kind: [] for kind in TYPES}
    try:
        bench.start_postgres(pg)
        b = bench.Bench(pg, False, 1)
        port = bench.free_port()
        receiver = [bench.PY, str(bench.BENCH / "receiver.py"), "--port", str(port)]
        with bench.process(receiver, log="destinations-receiver") as proc:
            bench.wait_port(port, proc)
            for round_ in range(args.rounds):
                for kind in TYPES:
                    rate = await drain(b, kind, args.total, port, exchange)
                    rates[kind].append(rate)
                    ratio = rate / rates["webhook"][-1]
                    print(f"round {round_} {kind:9s} {rate:8.0f}/s  ({ratio:.2f}x webhook)")
    finally:
        pg.cleanup()
        await amqp.close()
    base = statistics.median(rates["webhook"])
    print(f"\nmedian of {args.rounds}, {args.total} deliveries each, one destination:")
    for kind in TYPES:
        rate = statistics.median(rates[kind])
        print(f"  {kind:9s} {rate:8.0f} deliveries/s  {rate / base:.2f}x webhook")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
