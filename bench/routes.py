"""Benchmark the route endpoint against a minimal endpoint of the same app, with and without Redis.

Usage: DATABASE_URL=postgres://... CELERY_BROKER_URL=redis://127.0.0.1:6379/N .venv/bin/python bench/routes.py
       [--catalog ../shared/data] [--deployments 300] [--concurrency 16] [--seconds 20] [--reset]

Builds the demo fleet and its plan as ``mcm_demo --catalog --no-clusters`` does (first run, or with
``--reset``). No emulated cluster runs: one telemetry snapshot per cluster is stored that reports
every planned replica ready, so every planned cluster is a route. The app then runs in a child
process on a WSGI server from the standard library (``wsgiref``) that hands each connection to a
fixed pool of ``--workers`` threads (no keep-alive; each thread keeps one database connection),
with ``DEBUG=0``.
``--concurrency`` client threads in this process send requests for ``--seconds`` each to:

1. ``GET /api/v1/ping``;
2. ``GET /api/v1/deployments/{id}/route/`` for a random deployment and a random city of the
   Natural Earth places file (the built-in demo cities without it), with the route table in Redis;
3. the same with ``MCM_ROUTES_REDIS_URL`` pointing at a closed port, so every answer is computed
   from the database.

Every request authenticates with a staff user's token. It prints the median and p99 latency and
the requests per second of each run, the share of route answers per ``source``, and any errors.
"""

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
if not os.environ.get("DATABASE_URL") or not os.environ.get("CELERY_BROKER_URL"):
    sys.exit("set DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (Redis): this benchmark measures both")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcm_site.settings")
os.environ.setdefault("LOG_LEVEL", "ERROR")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from fleet.models import Cluster, TelemetrySnapshot, TelemetrySource  # noqa: E402
from placements import routing  # noqa: E402
from placements.demo import build_catalog_fleet, load_cities  # noqa: E402
from placements.models import Assignment, Deployment  # noqa: E402
from placements.services import current_plan  # noqa: E402

SERVER = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
sys.path.insert(0, {root!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcm_site.settings")
from django.core.wsgi import get_wsgi_application

class PoolServer(WSGIServer):
    # A fixed pool of threads, each keeping its own database connection (CONN_MAX_AGE 60 s), so
    # the server holds at most {workers} PostgreSQL connections.
    request_queue_size = 128
    pool = ThreadPoolExecutor(max_workers={workers})

    def process_request(self, request, client_address):
        self.pool.submit(self.handle_one, request, client_address)

    def handle_one(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass

make_server("127.0.0.1", {port}, get_wsgi_application(), PoolServer, QuietHandler).serve_forever()
"""


def report_planned_ready() -> int:
    """Store one snapshot per planned cluster reporting every planned replica ready; return the clusters."""
    by_cluster: dict[int, dict[str, dict]] = {}
    for deployment_id, cluster_id, name, replicas in Assignment.objects.filter(plan=current_plan()).values_list(
        "deployment_id", "cluster_id", "deployment__name", "replicas"
    ):
        entry = by_cluster.setdefault(cluster_id, {}).setdefault(
            str(deployment_id), {"name": name, "replicas": 0, "ready": 0}
        )
        entry["replicas"] += replicas
        entry["ready"] += replicas
    TelemetrySnapshot.objects.bulk_create(
        [
            TelemetrySnapshot(cluster_id=cluster_id, source=TelemetrySource.PULL, ok=True, deployments=deployments)
            for cluster_id, deployments in by_cluster.items()
        ]
    )
    return len(by_cluster)


def staff_token() -> str:
    user, _ = get_user_model().objects.get_or_create(username="bench-routes", defaults={"is_staff": True})
    return Token.objects.get_or_create(user=user)[0].key


def start_server(port: int, redis_url: str | None, workers: int) -> subprocess.Popen:
    env = dict(os.environ, DEBUG="0", LOG_LEVEL="ERROR")
    if redis_url is not None:
        env["MCM_ROUTES_REDIS_URL"] = redis_url
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(root=str(ROOT), port=port, workers=workers)], env=env
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/api/v1/ping")
            connection.getresponse().read()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the app server on port {port} did not respond within 30 s")


def run_load(port: int, token: str, paths, *, concurrency: int, seconds: float) -> dict:
    """Send requests from ``concurrency`` threads for ``seconds``; ``paths`` is a callable returning the next path."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sources: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Token {token}"}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine, my_errors, my_sources = [], {}, {}
        while time.monotonic() < deadline:
            path = paths(rng)
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                connection.close()
            except OSError as error:
                my_errors[type(error).__name__] = my_errors.get(type(error).__name__, 0) + 1
                continue
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                my_errors[f"HTTP {response.status}"] = my_errors.get(f"HTTP {response.status}", 0) + 1
                continue
            source = json.loads(body).get("source")
            if source:
                my_sources[source] = my_sources.get(source, 0) + 1
        with lock:
            latencies.extend(mine)
            for key, count in my_errors.items():
                errors[key] = errors.get(key, 0) + count
            for key, count in my_sources.items():
                sources[key] = sources.get(key, 0) + count

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "median_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "sources": sources,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=Path(settings.MCM_DATA_DIR), help="Data folder to build from.")
    parser.add_argument("--deployments", type=int, default=300, help="Demo deployments (default 300).")
    parser.add_argument("--concurrency", type=int, default=16, help="Client threads (default 16).")
    parser.add_argument("--seconds", type=float, default=20.0, help="Seconds per run (default 20).")
    parser.add_argument("--port", type=int, default=8765, help="Port of the app server on 127.0.0.1.")
    parser.add_argument(
        "--workers", type=int, default=8, help="Server threads, each with one database connection (default 8)."
    )
    parser.add_argument("--reset", action="store_true", help="Empty the database and build the fleet again.")
    args = parser.parse_args()

    database = settings.DATABASES["default"]["NAME"]
    print(f"Database: PostgreSQL ({database}); route table: {settings.MCM_ROUTES_REDIS_URL}")
    print(f"CPUs: {os.cpu_count()}, load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    build_catalog_fleet(catalog=args.catalog, deployments=args.deployments, reset=args.reset)
    deployment_ids = list(Deployment.objects.values_list("pk", flat=True))
    clusters = report_planned_ready()
    cities, cities_source = load_cities(args.catalog if args.catalog.is_dir() else None)
    written = routing.refresh_routes(reason="benchmark start")
    entries = routing.serving_entries()
    routed = sum(1 for entry in entries.values() if entry["clusters"])
    print(
        f"Fleet: {Cluster.objects.count()} clusters, {len(deployment_ids)} deployments, "
        f"plan v{current_plan().version}; "
        f"{clusters} clusters report ready replicas; {routed} deployments have routes; {written} table entries written"
    )
    print(f"Client cities: {len(cities)} from {cities_source}")
    token = staff_token()

    def route_path(rng: random.Random) -> str:
        city = rng.choice(cities)
        return (
            f"/api/v1/deployments/{rng.choice(deployment_ids)}/route/"
            f"?latitude={city.latitude:.4f}&longitude={city.longitude:.4f}"
        )

    runs = [
        ("ping", settings.MCM_ROUTES_REDIS_URL, lambda rng: "/api/v1/ping"),
        ("route, table in Redis", settings.MCM_ROUTES_REDIS_URL, route_path),
        ("route, Redis unavailable", "redis://127.0.0.1:1/0", route_path),
    ]
    results = []
    for label, redis_url, paths in runs:
        server = start_server(args.port, redis_url, args.workers)
        try:
            # A short warm-up: the first requests load the places index and open database connections.
            run_load(args.port, token, paths, concurrency=args.concurrency, seconds=2.0)
            result = run_load(args.port, token, paths, concurrency=args.concurrency, seconds=args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=10)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"{label:<26} {result['requests']:>7} requests  median {result['median_ms']:7.1f} ms  "
            f"p99 {result['p99_ms']:7.1f} ms  {result['rps']:7.1f} req/s  sources {result['sources'] or '-'}  "
            f"errors {result['errors'] or 'none'}  load {load}"
        )
        results.append((label, result))
    return 0 if all(not result["errors"] for _, result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
