"""Delivery throughput by destination type, in one run: a backlog drained by `relay
dispatch` (a separate process, as users run it) to a webhook receiver (bench/receiver.py),
to RabbitMQ (127.0.0.1:5672, guest/guest) and to SQS (moto's server, `moto_server`, a
process of its own), rounds interleaved, each figure beside webhook's of the same round as
a ratio, with the dispatcher's CPU per delivery (relay's own cost, whatever the server's
speed). Timings are reported, never asserted.

The SQS figure is moto's as much as relay's: moto is a single Python process whose
werkzeug server closes every connection after one answer, so each message costs a new
TCP connection and moto's own work (about 60 messages/s on this machine, whatever the
concurrency); AWS keeps connections open and scales out. SQS runs with 32 deliveries in
flight (relay's default per destination), the others with bench/run_all.py's 256. Its
CPU per delivery includes a TCP connection per message (moto's doing) and no TLS (AWS's
endpoints are https).

    .venv/bin/python bench/destinations.py                  # 20,000 (SQS 2,000), 3 rounds
    .venv/bin/python bench/destinations.py --total 2000 --sqs-total 500 --rounds 1

Every drain starts from the same backlog (one destination, `bench/receiver`, the rows
written before the dispatcher starts; the config file makes the destination the type
measured) and are timed from the first finished delivery to the last, read from the
database: the same clock for every type.
"""

# (a benchmark driver: it blocks on purpose while processes run)
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg
from aiobotocore.session import get_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run_all as bench
from tests.support.pgserver import PgServer

RABBITMQ = ("127.0.0.1", 5672)
TYPES = ("webhook", "rabbitmq", "aws_sqs")
MOTO_SERVER = str(Path(bench.PY).parent / "moto_server")
# moto's werkzeug server takes a new connection per request, in a listen queue of 128:
# at 256 in flight connections wait past the 5 s timeout, so SQS gets 32 (relay's default).
OVERRIDES = {"aws_sqs": {"per_destination_concurrency": 32}}
# moto takes any key and secret.
AWS = {"region_name": "us-east-1", "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def destination_lines(kind: str, receiver_port: int, target: str) -> list[str]:
    """The destination's keys: ``target`` is the exchange (rabbitmq) or queue URL (aws_sqs)."""
    if kind == "webhook":
        return [
            f'url = "http://127.0.0.1:{receiver_port}/hook"',
            f'secret = "{bench.SECRET}"',
        ]
    if kind == "aws_sqs":
        return [
            'type = "aws_sqs"',
            f'config = {{ queue_url = "{target}" }}',
            'credentials = { key = "bench", secret = "bench-secret" }',
        ]
    host, port = RABBITMQ
    return [
        'type = "rabbitmq"',
        f'config = {{ server_url = "{host}:{port}", exchange = "{target}" }}',
        'credentials = { username = "guest", password = "guest" }',
    ]


def config(url: str, kind: str, receiver_port: int, target: str) -> Path:
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f'admin_api_key = "{bench.ADMIN_KEY}"',
        "health_port = 0",
        "[database]",
        f'url = "{url}"',
        "[delivery]",
        'allow_private_networks = ["127.0.0.0/8"]',
        *(f"{k} = {v}" for k, v in (bench.DISPATCH_SETTINGS | OVERRIDES.get(kind, {})).items()),
        "[[tenants]]",
        'id = "bench"',
        "[[tenants.destinations]]",
        'id = "receiver"',
        'topics = "*"',
        *destination_lines(kind, receiver_port, target),
    ]
    bench.OUT.mkdir(exist_ok=True)
    path = bench.OUT / f"relay-{kind}-{uuid.uuid4().hex[:8]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drain(
    b: bench.Bench, kind: str, total: int, receiver_port: int, target: str
) -> tuple[float, float]:
    """Deliveries a second, and the dispatcher's CPU milliseconds per delivery (while the
    middle 80% of the backlog is finished: startup and the last stragglers left out)."""
    url = await b.fresh_db()
    await bench.seed_relay(url, receiver_port, pending=total)
    conn = await asyncpg.connect(url)
    command = [bench.RELAY, "--config", str(config(url, kind, receiver_port, target)), "dispatch"]
    try:
        with bench.process(command, log=f"destinations-{kind}") as dispatch:
            deadline = time.monotonic() + 600
            while not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM relay.deliveries_finished)"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing delivered to {kind} (see bench/out/)")
                await asyncio.sleep(0.01)
            start = time.monotonic()
            marks: list[tuple[float, int]] = []  # (CPU, finished) at 10% and 90% finished
            while await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM relay.deliveries "
                "WHERE status IN ('pending', 'delivering'))"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the drain to {kind} did not finish in time: {await failures(conn)}"
                    )
                if len(marks) < 2:
                    finished = await conn.fetchval("SELECT count(*) FROM relay.deliveries_finished")
                    if finished >= total * (0.1 + 0.8 * len(marks)):
                        marks.append((cpu_seconds(dispatch.pid), finished))
                await asyncio.sleep(0.05)
            span = time.monotonic() - start
            if len(marks) == 1:  # the last batches were written at once: up to the end
                finished = await conn.fetchval("SELECT count(*) FROM relay.deliveries_finished")
                marks.append((cpu_seconds(dispatch.pid), finished))
        failed = await conn.fetchval(
            "SELECT count(*) FROM relay.attempts WHERE status <> 'success'"
        )
        if failed:
            raise RuntimeError(f"{failed} failed attempts to {kind}: {await failures(conn)}")
    finally:
        await conn.close()
    if len(marks) < 2:
        return total / span, float("nan")
    (cpu_a, done_a), (cpu_b, done_b) = marks
    return total / span, (cpu_b - cpu_a) * 1000 / max(done_b - done_a, 1)


async def failures(conn: asyncpg.Connection) -> str:
    """The failed attempts by code, with one detail each (see also bench/out/)."""
    rows = await conn.fetch(
        "SELECT error_code, count(*) AS n, min(error_detail) AS detail FROM relay.attempts"
        " WHERE status <> 'success' GROUP BY 1 ORDER BY 2 DESC"
    )
    return "; ".join(f"{r['error_code']} x{r['n']} ({r['detail']})" for r in rows)


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
    costs: dict[str, list[float]] = {kind: [] for kind in TYPES}
    try:
        bench.start_postgres(pg)
        b = bench.Bench(pg, False, 1)
        port, moto_port = bench.free_port(), bench.free_port()
        moto = f"http://127.0.0.1:{moto_port}"
        receiver = [bench.PY, str(bench.BENCH / "receiver.py"), "--port", str(port)]
        with (
            bench.process(receiver, log="destinations-receiver") as proc,
            bench.process(
                [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(moto_port)], log="destinations-moto"
            ) as moto_proc,
        ):
            bench.wait_port(port, proc)
            bench.wait_port(moto_port, moto_proc)
            for round_ in range(args.rounds):
                for kind in TYPES:
                    # A queue per drain: moto keeps every message it is sent.
                    target = await sqs_queue(moto) if kind == "aws_sqs" else exchange
                    total = args.sqs_total if kind == "aws_sqs" else args.total
                    rate, cost = await drain(b, kind, total, port, target)
                    rates[kind].append(rate)
                    costs[kind].append(cost)
                    ratio = rate / rates["webhook"][-1]
                    print(
                        f"round {round_} {kind:9s} {rate:8.0f}/s  ({ratio:.2f}x webhook)"
                        f"  {cost:.2f} ms CPU/delivery ({cost / costs['webhook'][-1]:.2f}x)"
                    )
    finally:
        pg.cleanup()
        await amqp.close()
    base, base_cost = statistics.median(rates["webhook"]), statistics.median(costs["webhook"])
    print(
        f"\nmedian of {args.rounds}, {args.total} deliveries each ({args.sqs_total} to SQS),"
        " one destination:"
    )
    for kind in TYPES:
        rate, cost = statistics.median(rates[kind]), statistics.median(costs[kind])
        print(
            f"  {kind:9s} {rate:8.0f} deliveries/s  {rate / base:.2f}x webhook   "
            f"relay dispatch {cost:.2f} ms CPU/delivery  {cost / base_cost:.2f}x webhook"
        )


async def sqs_queue(endpoint: str) -> str:
    """A new queue on moto's server: its URL."""
    async with get_session().create_client("sqs", endpoint_url=endpoint, **AWS) as sqs:
        answer = await sqs.create_queue(QueueName=f"relay-bench-{uuid.uuid4().hex[:8]}")
        return str(answer["QueueUrl"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    # moto takes about 60 messages a second: a smaller backlog keeps a round short.
    parser.add_argument("--sqs-total", type=int, default=2_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
