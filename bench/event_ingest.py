"""Benchmark event ingest: events per second through POST /api/v1/events, beside raw PostgreSQL COPY.

Usage: .venv/bin/python bench/event_ingest.py [--server postgres://postgres@127.0.0.1:5432]
       [--events 20000] [--broker redis://127.0.0.1:6379/12]

It creates a scratch database and migrates it. It serves the project's WSGI application over HTTP
on 127.0.0.1 from Django's single-threaded ``WSGIServer`` in a thread. One client thread posts
batches of 1, 100 and 1,000 capacity events, one request after another. Each request runs the
whole path: token authentication, JSON parsing, validation, the insert, the commit and one Celery
enqueue per batch to the ``--broker`` Redis database, which is emptied afterwards (no worker runs).
The baseline writes the same number of rows of the same shape into the same table with psycopg's
``COPY``. Then it times ``apply_events`` over the stored backlog, and drops the scratch database.
"""

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH_SIZES = (1, 100, 1000)
# Batches of one event cost a round trip each, so they get fewer events to keep the run short.
EVENTS_FOR_SINGLES = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL.")
    parser.add_argument("--events", type=int, default=20000, help="Events per batch size (default 20000).")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12", help="Redis URL for enqueued tasks.")
    options = parser.parse_args()

    database = f"mcm_bench_events_{os.getpid()}"
    with psycopg.connect(f"{options.server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        run(options, f"{options.server}/{database}")
    finally:
        with psycopg.connect(f"{options.server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def run(options, database_url: str) -> None:
    os.environ.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=options.broker,
        DJANGO_SETTINGS_MODULE="mcm_site.settings",
        DEBUG="0",
    )
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
    os.environ.setdefault("MCM_CREDENTIALS_KEYS", "YmVuY2htYXJrLW9ubHkta2V5LWJlbmNobWFyay0wMDA=")
    import django

    django.setup()
    logging.disable(logging.WARNING)  # one INFO line per batch would dominate the output
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    token, cluster_ids = seed()
    server, url = serve()
    print(f"PostgreSQL {server_version(database_url)}; hub {url} (Django WSGIServer: one server and one client thread)")
    print(f"{'path':<34} {'batch':>6} {'events':>8} {'seconds':>8} {'events/s':>10}")
    row = "{:<34} {:>6} {:>8} {:>8.2f} {:>10,.0f}".format
    try:
        for batch_size, cluster in zip(BATCH_SIZES, ("bench-1", "bench-100", "bench-1000"), strict=True):
            total = EVENTS_FOR_SINGLES if batch_size == 1 else options.events
            seconds = post_batches(url, token, cluster, batch_size, total)
            print(row("POST /api/v1/events (HTTP)", batch_size, total, seconds, total / seconds))
        seconds = copy_rows(database_url, cluster_ids["bench-copy"], options.events)
        print(row("psycopg COPY, same rows and table", "-", options.events, seconds, options.events / seconds))
        from fleet.events import apply_events

        started = time.perf_counter()
        applied = apply_events(cluster_ids["bench-1000"])
        seconds = time.perf_counter() - started
        print(row("apply_events over the backlog", "-", applied, seconds, applied / seconds))
    finally:
        server.shutdown()
        empty_queue(options.broker)
        from django.db import connections

        connections.close_all()


def seed() -> tuple[str, dict[str, int]]:
    from django.contrib.auth.models import Permission, User
    from rest_framework.authtoken.models import Token

    from fleet.models import Cluster, LocationSource, Provider, Region
    from fleet.skus import ensure_skus

    ensure_skus()
    provider = Provider.objects.create(name="bench")
    region = Region.objects.create(
        provider=provider, code="bench-1", latitude=0, longitude=0, location_source=LocationSource.BUILT_IN
    )
    names = ("bench-1", "bench-100", "bench-1000", "bench-copy")
    cluster_ids = {name: Cluster.objects.create(name=name, region=region).pk for name in names}
    agent = User.objects.create_user(username="bench-agent")
    agent.user_permissions.add(Permission.objects.get(codename="add_clusterevent"))
    return Token.objects.create(user=agent).key, cluster_ids


def serve():
    from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer
    from django.core.wsgi import get_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def setup(self):
            super().setup()
            # The handler writes headers and body in separate sends; without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK add about 40 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format, *args):  # noqa: A002 - the standard library's signature
            pass

    server = WSGIServer(("127.0.0.1", 0), QuietHandler)
    server.set_app(get_wsgi_application())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/api/v1/events"


def capacity_event(cluster: str, sequence: int) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "cluster": cluster,
        "sequence": sequence,
        "kind": "capacity",
        "occurred_at": "2026-12-04T10:00:00+00:00",
        "payload": {
            "gpus": {"H100": {"allocatable": 64 - sequence % 8}, "L4": {"allocatable": 16}},
            "complete": True,
            "unknown_gpu_products": [],
        },
    }


def post_batches(url: str, token: str, cluster: str, batch_size: int, total: int) -> float:
    """Post ``total`` events in batches; return the seconds spent, body encoding excluded."""
    bodies = []
    for start in range(1, total + 1, batch_size):
        events = [capacity_event(cluster, sequence) for sequence in range(start, min(start + batch_size, total + 1))]
        bodies.append(json.dumps({"events": events}).encode())
    headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
    started = time.perf_counter()
    for body in bodies:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
        if reply["accepted"] != len(json.loads(body)["events"]):
            raise SystemExit(f"The hub rejected {reply['rejected']} events of a batch; the benchmark stopped.")
    return time.perf_counter() - started


def copy_rows(database_url: str, cluster_id: int, total: int) -> float:
    """COPY ``total`` rows shaped like the posted events into the event table; return the seconds spent."""
    rows = [
        (
            cluster_id,
            event["event_id"],
            event["sequence"],
            event["kind"],
            event["occurred_at"],
            json.dumps(event["payload"]),
        )
        for event in (capacity_event("bench-copy", sequence) for sequence in range(1, total + 1))
    ]
    started = time.perf_counter()
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        copy_sql = (
            "COPY fleet_clusterevent (cluster_id, event_id, sequence, kind, occurred_at, payload, received_at) "
            "FROM STDIN"
        )
        with cursor.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row((*row, "now"))
    return time.perf_counter() - started


def server_version(database_url: str) -> str:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SHOW server_version").fetchone()[0]


def empty_queue(broker: str) -> None:
    import redis

    client = redis.Redis.from_url(broker)
    client.delete("celery", "_kombu.binding.celery", "_kombu.binding_permanent.celery")


if __name__ == "__main__":
    main()
