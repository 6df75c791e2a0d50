"""The production layout: Procfile, compose.yaml and Dockerfile name real modules, commands and settings.

Docker is not run here. The tests parse the files, check every command against MCM's code, load the
WSGI app with ``gunicorn --check-config`` in the environment compose.yaml gives the web process, and
(slow) serve ``/api/v1/ping`` through gunicorn on 127.0.0.1.
"""

import http.client
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dj_database_url
import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app
from django.conf import settings
from django.core.management import get_commands
from kombu.utils.imports import symbol_by_name
from rest_framework.authtoken.models import Token

from tests.celery_worker import database_url

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = {"web", "worker", "beat", "release"}
SERVICES = {"postgres", "redis", "migrate", "web", "worker", "beat"}
MCM_SERVICES = ("migrate", "web", "worker", "beat")
# Values an operator gives compose (in the shell or .env) for these tests.
OPERATOR_ENV = {
    "SECRET_KEY": "k7Qv2-Xr9pLm4Zt8Wc1Ns6Bh3Yf5Jd0Ga-Ue7Ri2Oo9Pq4Ls8Kx1Mv6Tb3Hn5Cz0",
    "MCM_CREDENTIALS_KEYS": "dGVzdC1vbmx5LWtleS10ZXN0LW9ubHkta2V5LTAwMDA=",
    "ALLOWED_HOSTS": "mcm.example.com",
    "POSTGRES_PASSWORD": "compose-test-password",
}
# Variables the web process reads besides MCM's settings: gunicorn's bind port and worker count.
GUNICORN_ENV = {"PORT", "WEB_CONCURRENCY"}
# Seconds gunicorn may take to import MCM and listen on its port.
GUNICORN_START_TIMEOUT_S = 30


# Parsing.


def read_procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, separator, command = line.partition(":")
        assert separator, f"Procfile line {line!r} lacks 'name: command'"
        processes[name.strip()] = command.strip()
    return processes


def read_compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Substitute ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` as compose does.

    Raises KeyError naming the variable when a ``:?`` variable is unset or empty.
    """

    def substitute(match: re.Match) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        present = env.get(name, "")
        if operator == ":-":
            return present or argument
        if operator == ":?" and not present:
            raise KeyError(f"{name}: {argument}")
        return present

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", substitute, value)


def service_env(service: dict, env: dict[str, str]) -> dict[str, str]:
    return {name: interpolate(str(value), env) for name, value in service.get("environment", {}).items()}


def command_of(service: dict) -> str:
    """Return a compose service's command as the shell line a Procfile would hold."""
    command = service["command"]
    if isinstance(command, str):
        return command
    if command[:2] == ["sh", "-c"]:
        return command[2]
    return shlex.join(command)


def settings_variables() -> tuple[set[str], set[str]]:
    """Return (every variable mcm_site/settings.py reads, the ones it requires), found in its source."""
    source = (ROOT / "mcm_site" / "settings.py").read_text()
    readers = r"(?:env_flag|env_required|env_seconds|env_rate|os\.environ\.get)\(\s*\"(\w+)\"|os\.environ\[\"(\w+)\"\]"
    read = {first or second for first, second in re.findall(readers, source)}
    required = set(re.findall(r"env_required\(\s*\"(\w+)\"", source))
    return read, required


def production_required() -> set[str]:
    _, required = settings_variables()
    # Optional only for development: without MCM_CREDENTIALS_KEYS no cluster credential can be stored,
    # and ALLOWED_HOSTS defaults to 127.0.0.1 and localhost.
    return required | {"MCM_CREDENTIALS_KEYS", "ALLOWED_HOSTS"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (instruction, arguments) pairs of the Dockerfile, with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def web_environment(**overrides: str) -> dict[str, str]:
    """Return the environment compose.yaml gives the web process, runnable on this machine.

    The compose host names postgres and redis do not resolve here, so the database and broker are
    the test run's. gunicorn binds to the address GUNICORN_CMD_ARGS sets, not to 0.0.0.0:$PORT.
    """
    env = service_env(read_compose()["services"]["web"], OPERATOR_ENV)
    env.pop("PORT")
    env.update(
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        HOME=os.environ.get("HOME", "/tmp"),
    )
    env.update(overrides)
    return env


def run_shell(command: str, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


# The Procfile.


def test_procfile_processes():
    assert set(read_procfile()) == PROCESSES


def test_procfile_web_serves_mcm_wsgi():
    argv = shlex.split(read_procfile()["web"])

    assert argv[:2] == ["gunicorn", "mcm_site.wsgi"]
    assert importlib.util.find_spec("mcm_site.wsgi") is not None
    assert settings.WSGI_APPLICATION == "mcm_site.wsgi.application"
    assert "--bind" not in argv, "a fixed --bind overrides gunicorn's 0.0.0.0:$PORT default"
    timeout_s = float(argv[argv.index("--timeout") + 1])
    # The admin's previews solve a dry-run plan within the request.
    assert timeout_s > settings.MCM_SCHEDULER_TIME_LIMIT_S


@pytest.mark.parametrize("process", ["worker", "beat"])
def test_procfile_celery_app(process):
    argv = shlex.split(read_procfile()[process])

    assert argv[:4] == ["celery", "-A", "mcm_site", process]
    assert isinstance(find_app("mcm_site"), Celery)


def test_procfile_beat_uses_database_scheduler():
    argv = shlex.split(read_procfile()["beat"])
    scheduler = argv[argv.index("--scheduler") + 1]

    assert scheduler == settings.CELERY_BEAT_SCHEDULER
    assert symbol_by_name(scheduler).__name__ == "DatabaseScheduler"


def test_procfile_release_prepares_a_deploy():
    steps = [shlex.split(step) for step in read_procfile()["release"].split("&&")]
    commands = get_commands()

    assert [step[2] for step in steps] == ["migrate", "collectstatic", "setup_schedules"]
    for step in steps:
        assert step[:2] == ["python", "manage.py"]
        assert step[2] in commands, f"manage.py has no {step[2]} command"


# compose.yaml.


def test_compose_services():
    assert set(read_compose()["services"]) == SERVICES


@pytest.mark.parametrize(("service", "process"), [("web", "web"), ("worker", "worker"), ("beat", "beat")])
def test_compose_commands_match_procfile(service, process):
    assert command_of(read_compose()["services"][service]) == read_procfile()[process]


def test_compose_migrate_runs_release():
    services = read_compose()["services"]

    assert command_of(services["migrate"]) == read_procfile()["release"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["web", "worker", "beat"])
def test_compose_waits_for_migrate(service):
    depends_on = read_compose()["services"][service]["depends_on"]

    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", MCM_SERVICES)
def test_compose_sets_required_settings(service):
    env = service_env(read_compose()["services"][service], OPERATOR_ENV)

    missing = production_required() - {name for name, value in env.items() if value}
    assert not missing, f"compose service {service} lacks {sorted(missing)}"
    assert env["DEBUG"] == "0"
    assert "MCM_EMBEDDED" not in env


@pytest.mark.parametrize("service", MCM_SERVICES)
def test_compose_sets_only_known_variables(service):
    read, _ = settings_variables()
    env = read_compose()["services"][service]["environment"]

    unknown = set(env) - read - GUNICORN_ENV
    assert not unknown, f"compose service {service} sets {sorted(unknown)}, which MCM does not read"


@pytest.mark.parametrize("secret", ["SECRET_KEY", "MCM_CREDENTIALS_KEYS", "ALLOWED_HOSTS", "POSTGRES_PASSWORD"])
def test_compose_rejects_missing_secret(secret):
    env = {name: value for name, value in OPERATOR_ENV.items() if name != secret}
    web = read_compose()["services"]["web"]

    with pytest.raises(KeyError, match=secret):
        service_env(web, env)


def test_compose_urls_reach_its_services():
    services = read_compose()["services"]
    env = service_env(services["web"], OPERATOR_ENV)
    postgres = service_env(services["postgres"], OPERATOR_ENV)
    database = dj_database_url.parse(env["DATABASE_URL"])

    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert database["HOST"] == "postgres"
    assert database["NAME"] == postgres["POSTGRES_DB"]
    assert database["USER"] == postgres["POSTGRES_USER"]
    assert database["PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379/")


def test_compose_web_healthcheck_pings_api():
    web = read_compose()["services"]["web"]
    check = web["healthcheck"]["test"]

    assert check[:3] == ["CMD", "python", "-c"]
    assert "/api/v1/ping" in check[3]
    assert web["environment"]["PORT"] == "8000"
    assert web["ports"] == ["127.0.0.1:8000:8000"]


# The Dockerfile.


def test_dockerfile_builds_from_python_slim():
    instructions = dockerfile_instructions()
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]

    assert instructions[0] == ("FROM", "python:3.12-slim")
    assert any("pip install -r requirements.txt" in run for run in runs)
    assert any("manage.py collectstatic --noinput" in run for run in runs)


def test_dockerfile_cmd_is_procfile_web():
    cmd = [json.loads(arguments) for instruction, arguments in dockerfile_instructions() if instruction == "CMD"]

    assert cmd == [shlex.split(read_procfile()["web"])]


def test_dockerfile_collectstatic_runs_with_its_environment():
    run = next(arguments for instruction, arguments in dockerfile_instructions() if "collectstatic" in arguments)
    words = shlex.split(run)
    command_start = words.index("python")
    assignments = dict(word.split("=", 1) for word in words[:command_start])
    env = {"PATH": os.environ["PATH"], **assignments}

    completed = subprocess.run(
        [sys.executable, *words[command_start + 1 :], "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert "static file" in completed.stdout


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())

    assert {".git", ".venv", ".env", "var", "tests"} <= ignored


# gunicorn.


def test_gunicorn_check_config():
    completed = run_shell(f"{read_procfile()['web']} --check-config", web_environment())

    assert completed.returncode == 0, completed.stderr


def test_gunicorn_check_config_without_secret_key_fails():
    env = web_environment()
    del env["SECRET_KEY"]

    completed = run_shell(f"{read_procfile()['web']} --check-config", env)

    assert completed.returncode != 0
    assert "SECRET_KEY is missing" in completed.stdout + completed.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def wait_until_serving(process: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + GUNICORN_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(
        f"gunicorn did not listen on 127.0.0.1:{port} within {GUNICORN_START_TIMEOUT_S} s:\n{log_path.read_text()}"
    )


@pytest.fixture
def gunicorn(transactional_db, tmp_path):
    """Start the Procfile's web command on a free port of 127.0.0.1 with one worker; yield the port."""
    port = free_port()
    env = web_environment(
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port} --workers 1", MCM_STATIC_ROOT=str(tmp_path / "static")
    )
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["sh", "-c", f"exec {read_procfile()['web']}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until_serving(process, port, log_path)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_gunicorn_serves_ping(gunicorn, ops):
    token = Token.objects.create(user=ops)
    proxied = {"Host": "mcm.example.com", "X-Forwarded-Proto": "https"}

    status, _, body = get(gunicorn, "/api/v1/ping", {**proxied, "Authorization": f"Token {token.key}"})
    anonymous_status, _, _ = get(gunicorn, "/api/v1/ping", proxied)
    plain_status, plain_headers, _ = get(gunicorn, "/api/v1/ping", {"Host": "mcm.example.com"})
    foreign_status, _, _ = get(gunicorn, "/api/v1/ping", {**proxied, "Host": "other.example.org"})

    assert status == 200
    assert json.loads(body) == {"ok": True}
    assert anonymous_status == 401
    # MCM_HTTPS is on by default in production, so a request that did not come through HTTPS is redirected.
    assert plain_status == 301
    assert plain_headers["Location"] == "https://mcm.example.com/api/v1/ping"
    assert foreign_status == 400


@pytest.mark.slow
def test_gunicorn_serves_admin_static_files(gunicorn):
    proxied = {"Host": "mcm.example.com", "X-Forwarded-Proto": "https"}

    status, headers, body = get(gunicorn, "/static/admin/css/base.css", proxied)
    missing_status, _, _ = get(gunicorn, "/static/admin/css/no-such-file.css", proxied)

    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert b"body" in body
    assert missing_status == 404


@pytest.mark.slow
def test_compose_healthcheck_passes_against_gunicorn(gunicorn):
    check = read_compose()["services"]["web"]["healthcheck"]["test"]
    env = {"PATH": os.environ["PATH"], "PORT": str(gunicorn), "ALLOWED_HOSTS": OPERATOR_ENV["ALLOWED_HOSTS"]}

    completed = subprocess.run([sys.executable, "-c", check[3]], env=env, capture_output=True, text=True, timeout=30)

    assert completed.returncode == 0, completed.stderr
