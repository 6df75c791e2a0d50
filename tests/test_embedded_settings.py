"""Settings of the embedded mode (MCM_EMBEDDED=1), loaded in a fresh interpreter apart from the test settings."""

import os
import subprocess
import sys
from pathlib import Path

# Acquires a producer the way an eager task's apply_async does, and logs kombu's warnings to stderr.
PRODUCER_SCRIPT = """
import logging
import django
logging.basicConfig(level=logging.WARNING)
django.setup()
from mcm_site.celery import app
with app.producer_or_acquire() as producer:
    print(producer.connection.as_uri())
"""


def test_embedded_broker_connection_logs_no_warning(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    environment.update(
        MCM_EMBEDDED="1", DEBUG="1", MCM_EMBEDDED_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="mcm_site.settings"
    )

    completed = subprocess.run(
        [sys.executable, "-c", PRODUCER_SCRIPT],
        cwd=Path(__file__).resolve().parent.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("memory://")
    assert "No hostname was supplied" not in completed.stderr
    assert "WARNING" not in completed.stderr
