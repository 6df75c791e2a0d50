"""A real Celery worker process for tests, serving a queue of its own on the test database."""

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from django.conf import settings
from django.db import connection
from kombu import Exchange, Queue

from mcm_site.celery import app

STOP_TIMEOUT_S = 10.0


def database_url() -> str:
    """Return the test database as a ``DATABASE_URL`` for the worker process."""
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@contextmanager
def running_worker(*, prefix: str, log_dir: Path, database: str, env: dict[str, str]) -> Iterator[SimpleNamespace]:
    """Start a solo-pool worker on a new queue, yield its queue, process and log path, then stop it.

    The worker takes no other test's or engineer's messages. On exit, messages still queued (a
    pending poll of execute_plan) and the queue's bindings are deleted from Redis.
    """
    queue = f"{prefix}-{uuid.uuid4().hex[:12]}"
    log_path = log_dir / "worker.log"
    command = [
        str(Path(settings.BASE_DIR) / ".venv" / "bin" / "celery"),
        "-A",
        "mcm_site",
        "worker",
        "--pool=solo",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    environment = {**os.environ, "DATABASE_URL": database, **env}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=settings.BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield SimpleNamespace(queue=queue, process=process, log_path=log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # Declaring the queue lets kombu find the bindings it deletes.
        with app.connection_for_write() as broker:
            bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(broker.default_channel)
            bound.declare()
            bound.delete()
