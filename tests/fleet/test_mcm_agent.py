"""The mcm_agent command: reads an emulated cluster's nodes and pushes events to a live hub."""

import json
from io import StringIO

import pytest
import redis
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from kombu.exceptions import OperationalError
from rest_framework.authtoken.models import Token

from emulator import EmulatedCluster
from fleet.events import apply_events
from fleet.models import ClusterCapacity, ClusterEvent
from fleet.tasks import apply_cluster_events
from mcm_site.celery import app as celery_app

pytestmark = pytest.mark.django_db(transaction=True)

CLUSTER = "aws-use1-a"
EMULATOR_TOKEN = "emulator-secret-token"
NODES = [
    ("h100-a", "NVIDIA-H100-80GB-HBM3", 8),
    ("h100-b", "NVIDIA-H100-80GB-HBM3", 8),
    ("l4-a", "NVIDIA-L4", 4),
]
CLOSED_PORT_URL = "http://127.0.0.1:1"


def reset_broker_connections() -> None:
    """Drop Celery's cached broker connections, so the next task publishes to the current broker URL."""
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def own_broker(monkeypatch, worker_id):
    """Point Celery at a Redis database of this pytest worker, emptied before and after the test.

    A queue of its own keeps these tests' tasks away from workers that other runs may have started.
    """
    database = 13 + (int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") else 0)
    url = f"redis://127.0.0.1:6379/{database}"
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads this variable before its settings
    reset_broker_connections()
    client = redis.Redis.from_url(url)
    client.delete("celery")
    yield client
    client.delete("celery", "_kombu.binding.celery", "_kombu.binding_permanent.celery")
    reset_broker_connections()


@pytest.fixture
def broker_down(monkeypatch):
    """Make every enqueue fail as it does when Redis is unreachable."""

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(apply_cluster_events, "apply_async", refuse)


@pytest.fixture
def emulated(fleet):
    with EmulatedCluster(CLUSTER, NODES, ready_delay_s=0.1, token=EMULATOR_TOKEN) as cluster:
        yield cluster


@pytest.fixture
def hub_token_file(tmp_path, django_user_model):
    agent = django_user_model.objects.create_user(username="agent-aws-use1-a")
    agent.user_permissions.add(Permission.objects.get(codename="add_clusterevent"))
    path = tmp_path / "hub-token"
    path.write_text(Token.objects.create(user=agent).key + "\n")
    return path


@pytest.fixture
def run_agent(live_server, emulated, hub_token_file, tmp_path, monkeypatch):
    """Run ``mcm_agent --once`` against the live hub and the emulated cluster; return its output."""
    monkeypatch.setenv("EMULATOR_TOKEN", EMULATOR_TOKEN)

    def run(**options) -> str:
        arguments = {
            "cluster": CLUSTER,
            "hub": live_server.url,
            "token_file": str(hub_token_file),
            "api_endpoint": emulated.url,
            "api_token_env": "EMULATOR_TOKEN",
            "state_file": str(tmp_path / "agent-state.json"),
            "once": True,
            "max_attempts": 2,
            "max_delay": 0.05,
            **options,
        }
        output = StringIO()
        call_command("mcm_agent", stdout=output, **arguments)
        return output.getvalue()

    return run


def stored_events() -> list[ClusterEvent]:
    return list(ClusterEvent.objects.filter(cluster__name=CLUSTER).order_by("sequence"))


def test_agent_pushes_capacity_and_health(run_agent, own_broker):
    run_agent()

    events = stored_events()
    assert [(event.sequence, event.kind) for event in events] == [(1, "capacity"), (2, "health")]
    assert events[0].payload == {
        "gpus": {"H100": {"allocatable": 16}, "L4": {"allocatable": 4}},
        "complete": True,
        "unknown_gpu_products": [],
    }
    assert events[1].payload == {"status": "ok", "message": ""}


def test_pushed_capacity_is_applied(run_agent, own_broker):
    run_agent()

    apply_events(stored_events()[0].cluster_id)

    rows = ClusterCapacity.objects.filter(cluster__name=CLUSTER).order_by("sku__name")
    assert [(row.sku.name, row.allocatable_gpus, row.in_use_gpus) for row in rows] == [("H100", 16, 4), ("L4", 4, 0)]


def test_push_enqueues_the_applier(run_agent, own_broker):
    run_agent()

    messages = [json.loads(message) for message in own_broker.lrange("celery", 0, -1)]
    cluster_id = stored_events()[0].cluster_id
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages] == [
        ("fleet.apply_cluster_events", f"({cluster_id},)")
    ]


def test_rerun_continues_the_sequence(run_agent, own_broker, tmp_path):
    run_agent()

    run_agent()

    assert [event.sequence for event in stored_events()] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "agent-state.json").read_text())["next_sequence"] == 5


def test_output_reports_the_push(run_agent, own_broker):
    output = run_agent()

    assert "Pushed sequences 1-2: 2 accepted, 0 duplicates, 0 rejected" in output


def test_output_and_logs_never_show_tokens(run_agent, own_broker, hub_token_file, caplog):
    output = run_agent()

    hub_token = hub_token_file.read_text().strip()
    assert hub_token not in output
    assert hub_token not in caplog.text
    assert EMULATOR_TOKEN not in output
    assert EMULATOR_TOKEN not in caplog.text


def test_unreachable_hub_keeps_events_pending(run_agent, own_broker, tmp_path):
    with pytest.raises(CommandError, match="Push failed"):
        run_agent(hub=CLOSED_PORT_URL)

    state = json.loads((tmp_path / "agent-state.json").read_text())
    assert [event["sequence"] for event in state["pending"]] == [1, 2]
    assert state["next_sequence"] == 3
    assert stored_events() == []


def test_pending_events_are_resent_with_their_ids(run_agent, own_broker, tmp_path):
    with pytest.raises(CommandError):
        run_agent(hub=CLOSED_PORT_URL)
    pending = json.loads((tmp_path / "agent-state.json").read_text())["pending"]

    run_agent()

    events = stored_events()
    assert [event.sequence for event in events] == [1, 2, 3, 4]
    assert [event.event_id for event in events[:2]] == [event["event_id"] for event in pending]


def test_resend_after_lost_reply_is_duplicate(run_agent, own_broker, tmp_path):
    run_agent()
    state_path = tmp_path / "agent-state.json"
    state = json.loads(state_path.read_text())
    # As if the hub stored sequences 1-2 but the reply never reached the agent.
    state["pending"] = [
        {"event_id": e.event_id, "cluster": CLUSTER, "sequence": e.sequence, "kind": e.kind,
         "occurred_at": e.occurred_at.isoformat(), "payload": e.payload}
        for e in stored_events()
    ]  # fmt: skip
    state_path.write_text(json.dumps(state))

    output = run_agent()

    assert "Pushed sequences 1-2: 0 accepted, 2 duplicates, 0 rejected" in output
    assert [event.sequence for event in stored_events()] == [1, 2, 3, 4]


def test_wrong_hub_token_fails_without_retrying(run_agent, own_broker, hub_token_file):
    hub_token_file.write_text("not-a-token")

    with pytest.raises(CommandError, match="HTTP 401"):
        run_agent(max_attempts=5, max_delay=30)

    assert stored_events() == []


def test_unreachable_cluster_pushes_failing_health(run_agent, own_broker):
    run_agent(api_endpoint=CLOSED_PORT_URL)

    events = stored_events()
    assert [(event.sequence, event.kind) for event in events] == [(1, "health")]
    assert events[0].payload["status"] == "failing"
    assert "list nodes on cluster aws-use1-a failed" in events[0].payload["message"]


def test_unknown_gpu_product_degrades_health(run_agent, own_broker):
    with EmulatedCluster(CLUSTER, [*NODES, ("nvl-a", "NVIDIA-H100-NVL", 8)], token=EMULATOR_TOKEN) as cluster:
        run_agent(api_endpoint=cluster.url)

    capacity, health = stored_events()
    assert capacity.payload["unknown_gpu_products"] == ["NVIDIA-H100-NVL"]
    assert capacity.payload["gpus"]["H100"] == {"allocatable": 16}
    assert health.payload == {"status": "degraded", "message": "GPU products with no SKU: NVIDIA-H100-NVL"}


def test_state_file_of_another_cluster_is_refused(run_agent, own_broker, tmp_path):
    (tmp_path / "agent-state.json").write_text(json.dumps({"cluster": "gcp-usw4-a", "next_sequence": 7}))

    with pytest.raises(CommandError, match="belongs to cluster 'gcp-usw4-a'"):
        run_agent()


def test_missing_hub_token_is_refused(run_agent, own_broker, monkeypatch):
    monkeypatch.delenv("MCM_AGENT_TOKEN", raising=False)

    with pytest.raises(CommandError, match="No hub token"):
        run_agent(token_file=None)


def test_hub_token_from_the_environment(run_agent, own_broker, hub_token_file, monkeypatch):
    monkeypatch.setenv("MCM_AGENT_TOKEN", hub_token_file.read_text().strip())

    run_agent(token_file=None)

    assert len(stored_events()) == 2


def test_push_succeeds_with_broker_down(run_agent, broker_down):
    output = run_agent()

    assert "2 accepted" in output
    assert [event.applied_at for event in stored_events()] == [None, None]


def test_invalid_hub_url_is_refused(run_agent, own_broker):
    with pytest.raises(CommandError, match="--hub 'not a url' is invalid"):
        run_agent(hub="not a url")

    assert stored_events() == []


def test_rejected_events_fail_a_single_run(run_agent, own_broker):
    with pytest.raises(CommandError, match="The hub rejected 2 events"):
        run_agent(cluster="no-such-cluster")
