"""Watch one cluster through its Kubernetes API and push capacity and health events to the hub.

The agent runs next to (or inside) its cluster and needs no database: it reads nodes through the
cluster's API and talks to the hub only through ``POST /api/v1/events``. Sequence numbers and
unacknowledged events are kept in a state file, so a restart continues the sequence and re-sends
the same event ids. The hub stores a re-sent event once.
"""

import contextlib
import fcntl
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from fleet.kube import ClusterAdapter, ClusterError, Credentials
from fleet.skus import sku_for_gpu_product

logger = logging.getLogger(__name__)

TOKEN_ENV = "MCM_AGENT_TOKEN"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
# Hub responses worth retrying: throttling and server errors. Other 4xx responses need an operator.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BASE_DELAY_S = 0.5


class PushError(Exception):
    """A batch the hub did not store; ``retryable`` is True when a later push may succeed."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class AgentState:
    """The next sequence number and the events not yet acknowledged, kept in a JSON file.

    The file is written before each push and replaced atomically (write, fsync, rename), so a crash
    at any point leaves either the old or the new state, and never reuses a sequence number.
    """

    def __init__(self, path: Path, cluster: str):
        self.path = path
        self.cluster = cluster
        self.next_sequence = 1
        self.pending: list[dict[str, Any]] = []

    @classmethod
    def load(cls, path: Path, cluster: str) -> "AgentState":
        state = cls(path, cluster)
        if not path.exists():
            return state
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CommandError(f"Cannot read the state file {path}: {error}. Fix or move it.") from error
        if data.get("cluster") != cluster:
            raise CommandError(
                f"The state file {path} belongs to cluster {data.get('cluster')!r}, not {cluster!r}; "
                "give each cluster its own --state-file."
            )
        state.next_sequence = int(data["next_sequence"])
        state.pending = list(data.get("pending", []))
        return state

    def save(self) -> None:
        data = {"cluster": self.cluster, "next_sequence": self.next_sequence, "pending": self.pending}
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def number(self, events: list[dict[str, Any]]) -> None:
        """Give each event the next sequence number and a new id, and keep them as pending."""
        for event in events:
            event["sequence"] = self.next_sequence
            event["event_id"] = uuid.uuid4().hex
            self.next_sequence += 1
        self.pending = events


def build_events(cluster: str, adapter: ClusterAdapter) -> list[dict[str, Any]]:
    """Read the cluster's nodes and return a capacity and a health event, without sequence numbers.

    When the API cannot be read, only a "failing" health event is returned.
    """
    now = timezone.now().isoformat()
    try:
        nodes = adapter.list_gpu_nodes()
    except ClusterError as error:
        logger.warning("reading cluster %s failed, pushing a failing health event: %s", cluster, error)
        return [_event(cluster, "health", now, {"status": "failing", "message": str(error)})]

    gpus: dict[str, dict[str, int]] = {}
    unknown_products: set[str] = set()
    not_ready: list[str] = []
    for node in nodes:
        if not node.gpu_product and not node.allocatable_gpus:
            continue  # a node without GPUs
        sku = sku_for_gpu_product(node.gpu_product)
        if sku is None:
            unknown_products.add(node.gpu_product or "(no gpu.product label)")
        elif not node.ready:
            not_ready.append(node.name)
        else:
            gpus.setdefault(sku, {"allocatable": 0})["allocatable"] += node.allocatable_gpus

    problems = []
    if not_ready:
        problems.append(f"{len(not_ready)} GPU nodes not ready: {', '.join(sorted(not_ready)[:10])}")
    if unknown_products:
        problems.append(f"GPU products with no SKU: {', '.join(sorted(unknown_products))}")
    capacity = {"gpus": gpus, "complete": True, "unknown_gpu_products": sorted(unknown_products)}
    health = {"status": "degraded" if problems else "ok", "message": "; ".join(problems)}
    return [_event(cluster, "capacity", now, capacity), _event(cluster, "health", now, health)]


def _event(cluster: str, kind: str, occurred_at: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"cluster": cluster, "kind": kind, "occurred_at": occurred_at, "payload": payload}


class HubClient:
    """Posts event batches to the hub, retrying with capped exponential back-off and full jitter."""

    def __init__(self, hub: str, token: str, *, max_attempts: int, max_delay_s: float, timeout_s: float):
        base = hub.rstrip("/")
        self.url = base if base.endswith("/api/v1/events") else f"{base}/api/v1/events"
        self.token = token
        self.max_attempts = max_attempts
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s

    def push(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Post one batch and return the hub's reply; raises PushError once attempts run out."""
        body = json.dumps({"events": events}).encode()
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._post(body)
            except PushError as error:
                if not error.retryable or attempt == self.max_attempts:
                    raise
                delay = random.uniform(0, min(self.max_delay_s, BASE_DELAY_S * 2 ** (attempt - 1)))
                logger.warning(
                    "push to %s failed (attempt %s of %s): %s; retrying in %.1f s",
                    self.url,
                    attempt,
                    self.max_attempts,
                    error,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _post(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Token {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read(500).decode(errors="replace")
            raise PushError(f"HTTP {error.code}: {detail}", retryable=error.code in RETRYABLE_STATUSES) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise PushError(f"{type(error).__name__}: {error}", retryable=True) from None


class Command(BaseCommand):
    help = (
        "Watch one cluster's GPU nodes through its Kubernetes API and push capacity and health events "
        f"to the MCM hub. The hub token is read from --token-file or the {TOKEN_ENV} environment variable."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--cluster", required=True, help="The cluster's name as registered in MCM.")
        parser.add_argument("--hub", required=True, help="The hub's base URL, for example https://mcm.example.")
        parser.add_argument("--token-file", help=f"File with the hub's API token; default: ${TOKEN_ENV}.")
        parser.add_argument(
            "--api-endpoint",
            help="The cluster's Kubernetes API URL; default: the in-cluster service (KUBERNETES_SERVICE_HOST).",
        )
        parser.add_argument(
            "--api-token-env", help="Environment variable with the Kubernetes API bearer token (with --api-endpoint)."
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=settings.MCM_HEARTBEAT_INTERVAL_S,
            help="Seconds between pushes; each push is a heartbeat (default MCM_HEARTBEAT_INTERVAL_S, 10).",
        )
        parser.add_argument("--once", action="store_true", help="Push one batch and exit.")
        parser.add_argument(
            "--state-file",
            help="JSON file with the next sequence number and unacknowledged events, so a restart continues "
            "the sequence (default: mcm-agent-<cluster>.json in the working directory).",
        )
        parser.add_argument("--max-attempts", type=int, default=5, help="Tries per push (default 5).")
        parser.add_argument(
            "--max-delay", type=float, default=30.0, help="Maximum seconds between tries of one push (default 30)."
        )
        parser.add_argument("--timeout", type=float, default=10.0, help="Seconds per HTTP request (default 10).")

    def handle(self, *args, **options):
        cluster = options["cluster"]
        if options["max_attempts"] < 1:
            raise CommandError("--max-attempts must be at least 1.")
        hub_url = urlsplit(options["hub"])
        if hub_url.scheme not in ("http", "https") or not hub_url.hostname:
            raise CommandError(
                f"--hub {options['hub']!r} is invalid: use an http or https URL such as http://127.0.0.1:8000"
            )
        hub = HubClient(
            options["hub"],
            read_hub_token(options["token_file"]),
            max_attempts=options["max_attempts"],
            max_delay_s=options["max_delay"],
            timeout_s=options["timeout"],
        )
        adapter = build_adapter(cluster, options["api_endpoint"], options["api_token_env"], options["timeout"])
        state_path = Path(options["state_file"] or f"mcm-agent-{cluster}.json")
        with locked(state_path):
            state = AgentState.load(state_path, cluster)
            self.stdout.write(f"Agent for {cluster}: pushing to {hub.url}, state in {state_path}")
            try:
                self.run(cluster, adapter, hub, state, once=options["once"], interval_s=options["interval"])
            finally:
                adapter.close()

    def run(self, cluster, adapter, hub, state, *, once: bool, interval_s: float) -> None:
        while True:
            try:
                rejected = self.tick(cluster, adapter, hub, state)
            except PushError as error:
                if once:
                    raise CommandError(f"Push failed: {error}. The events stay in {state.path}.") from error
                logger.error("push failed, the events stay pending for the next interval: %s", error)
                rejected = 0
            if once:
                if rejected:
                    raise CommandError(f"The hub rejected {rejected} events; their errors are logged above.")
                return
            time.sleep(interval_s)

    def tick(self, cluster: str, adapter: ClusterAdapter, hub: HubClient, state: AgentState) -> int:
        """Re-send the events left from an earlier failed push, then read the cluster and push new ones.

        Returns the number of events the hub rejected.
        """
        rejected = 0
        if state.pending:
            rejected += self.push(hub, state)
        state.number(build_events(cluster, adapter))
        state.save()  # before the push, so a crash after it re-sends these ids instead of reusing the numbers
        return rejected + self.push(hub, state)

    def push(self, hub: HubClient, state: AgentState) -> int:
        reply = hub.push(state.pending)
        sequences = [event["sequence"] for event in state.pending]
        self.stdout.write(
            f"Pushed sequences {min(sequences)}-{max(sequences)}: {reply.get('accepted')} accepted, "
            f"{reply.get('duplicates')} duplicates, {reply.get('rejected')} rejected"
        )
        for result in reply.get("results", []):
            if result.get("status") == "rejected":
                event = state.pending[result["index"]]
                # The hub applies events in sequence order, so a rejected event delays the later ones
                # until the hub skips the gap after MCM_EVENT_GAP_TIMEOUT_S.
                logger.error(
                    "hub rejected event %s (sequence %s): %s", event["event_id"], event["sequence"], result["errors"]
                )
        state.pending = []
        state.save()
        return int(reply.get("rejected") or 0)


def read_hub_token(token_file: str | None) -> str:
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise CommandError(f"Cannot read --token-file {token_file}: {error.strerror}.") from error
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CommandError(f"No hub token: give --token-file or set {TOKEN_ENV}.")
    return token


def build_adapter(cluster: str, endpoint: str | None, token_env: str | None, timeout_s: float) -> ClusterAdapter:
    """Connect to the cluster's API at ``endpoint``, or through the in-cluster service account."""
    if endpoint:
        token = os.environ.get(token_env, "") if token_env else ""
        if token_env and not token:
            raise CommandError(f"--api-token-env names {token_env}, which is not set or empty.")
        return ClusterAdapter(cluster, endpoint, Credentials(token=token), timeout_s=timeout_s)

    # NOTE: the in-cluster path follows Kubernetes' documented service-account layout and has not
    # been run against a real cluster.
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not IN_CLUSTER_TOKEN.exists():
        raise CommandError("Give --api-endpoint (and --api-token-env), or run the agent inside the cluster.")
    credentials = Credentials(
        token=IN_CLUSTER_TOKEN.read_text(encoding="utf-8").strip(),
        ca_cert_pem=IN_CLUSTER_CA.read_text(encoding="utf-8") if IN_CLUSTER_CA.exists() else "",
    )
    return ClusterAdapter(cluster, f"https://{host}:{port}", credentials, timeout_s=timeout_s)


@contextlib.contextmanager
def locked(state_path: Path):
    """Hold an exclusive lock beside the state file, so two agents cannot share one sequence."""
    lock_path = state_path.with_name(state_path.name + ".lock")
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(f"Another agent has locked {lock_path}; run one agent per state file.") from None
        yield
