"""The admin's landing page: the pool map, capacity tables, clusters in trouble, short deployments,
pending failovers, latest decisions, background health, and the fragment the page refreshes from."""

import io
import re
import sys
import types
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

import tasks
from compliance.services import record_event
from fleet import worldmap
from fleet.models import (
    Cluster,
    ClusterCapacity,
    ClusterHealth,
    LocationSource,
    Outage,
    OutageScope,
    OutageSource,
    Region,
)
from placements.models import (
    Assignment,
    DeploymentCondition,
    DriftRecord,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
)

pytestmark = pytest.mark.django_db

INDEX = "/admin/"
FRAGMENT = "/admin/dashboard/fragment/"


@pytest.fixture
def no_role(django_user_model):
    return django_user_model.objects.create_user(username="newcomer", is_staff=True)


@pytest.fixture
def no_background_health(monkeypatch):
    """Make ``from tasks import health`` raise ImportError, as on an installation without it."""
    monkeypatch.delattr(tasks, "health", raising=False)
    monkeypatch.setitem(sys.modules, "tasks.health", None)


@dataclass
class FakeStatus:
    name: str
    task: str
    every_s: int
    enabled: bool
    last_run_at: datetime | None
    last_status: str
    late: bool


@pytest.fixture
def background_health(monkeypatch):
    """A ``tasks.health`` with one late and one punctual schedule and 7 queued messages."""
    module = types.ModuleType("tasks.health")
    ran_at = timezone.now()
    module.schedule_statuses = lambda now=None: [
        FakeStatus("collect telemetry", "placements.collect_telemetry", 10, True, ran_at, "succeeded", False),
        FakeStatus("plan placements", "tasks.plan_placements", 300, True, ran_at - timedelta(hours=1), "failed", True),
    ]
    module.queue_backlog = lambda: 7
    monkeypatch.setattr(tasks, "health", module, raising=False)
    monkeypatch.setitem(sys.modules, "tasks.health", module)
    return module


def login(client, user):
    client.force_login(user)
    return client


def section(html: str, element_id: str) -> str:
    """Return the element with ``element_id`` up to the end of its table, list, svg or box."""
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"', html)
    assert match, f"no element with id {element_id!r} in the page"
    tag = match.group(1)
    end = html.find(f"</{tag}>", match.start())
    if tag == "div":
        # A box contains nested divs: take everything up to the next panel.
        end = html.find('<div class="module', match.end())
        end = len(html) if end < 0 else end
    return html[match.start() : end]


def circles(html: str, css_class: str) -> list[dict]:
    """Return the attributes of each ``<circle class="css_class">`` of the world map."""
    svg = section(html, "world-map")
    found = []
    for tag in re.findall(rf'<circle class="{css_class}"[^>]*>', svg):
        found.append(dict(re.findall(r'([\w-]+)="([^"]*)"', tag)))
    return found


# Access.


@pytest.mark.parametrize("persona", ["superuser", "ops", "auditor"])
def test_dashboard_renders_for_staff_roles(client, request, applied_plan, persona):
    login(client, request.getfixturevalue(persona))

    response = client.get(INDEX)

    assert response.status_code == 200
    html = response.content.decode()
    for element_id in ("world-map", "capacity-by-sku", "capacity-by-provider", "trouble-clusters"):
        assert f'id="{element_id}"' in html
    for element_id in ("short-deployments", "pending-failovers", "latest-decisions"):
        assert f'id="{element_id}"' in html
    assert "app-placements-module" in html or 'class="app-placements' in html  # Django's app list stays


def test_dashboard_redirects_anonymous_to_login(client):
    response = client.get(INDEX)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_fragment_redirects_anonymous_to_login(client):
    response = client.get(FRAGMENT)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_dashboard_without_role_hides_pool(client, no_role, applied_plan):
    response = login(client, no_role).get(INDEX)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="world-map"' not in html
    assert 'id="latest-decisions"' not in html
    assert "no role" in html


def test_compliance_sees_decisions_not_pool(client, compliance_officer, applied_plan):
    record_event(actor="scheduler", action="plan.applied", subject=applied_plan)

    html = login(client, compliance_officer).get(INDEX).content.decode()

    assert 'id="latest-decisions"' in html
    assert 'id="world-map"' not in html
    assert 'id="trouble-clusters"' not in html


def test_auditor_sees_no_approve_button(client, auditor, applied_plan):
    FailoverRequest.objects.create(
        deployment=applied_plan.outcomes.first().deployment, kind="failover", replicas=1, reason="lost"
    )

    html = login(client, auditor).get(INDEX).content.decode()

    assert 'id="pending-failovers"' in html
    assert "<form" not in section(html, "pending-failovers")


# The map.


@pytest.fixture
def map_fleet(fleet, applied_plan):
    """eu-west-1 down, us-west4 suspect, and an extra region whose cluster has no GPUs."""
    Cluster.objects.filter(name="aws-euw1-a").update(health=ClusterHealth.DOWN, health_reason="3 failed reads")
    Cluster.objects.filter(name="gcp-usw4-a").update(health=ClusterHealth.SUSPECT, health_reason="1 failed read")
    empty = Region.objects.create(
        provider=fleet.gcp,
        code="europe-west4",
        city="Eemshaven",
        latitude=53.4,
        longitude=6.8,
        location_source=LocationSource.BUILT_IN,
    )
    Cluster.objects.create(name="gcp-euw4-a", region=empty)
    Region.objects.create(
        provider=fleet.gcp, code="asia-east1", latitude=24.0, longitude=121.0, location_source=LocationSource.BUILT_IN
    )
    return fleet


def test_map_colours_regions_by_health(superuser_client, map_fleet):
    html = superuser_client.get(INDEX).content.decode()

    health = {circle["data-region"]: circle["data-health"] for circle in circles(html, "region")}
    assert health == {
        "aws/us-east-1": "healthy",
        "aws/eu-west-1": "down",
        "gcp/us-west4": "degraded",
        "gcp/europe-west4": "empty",
    }


def test_map_leaves_out_regions_without_clusters(superuser_client, map_fleet):
    html = superuser_client.get(INDEX).content.decode()

    assert "gcp/asia-east1" not in section(html, "world-map")


def test_map_sizes_regions_by_gpu_capacity(superuser_client, map_fleet):
    html = superuser_client.get(INDEX).content.decode()

    radius = {circle["data-region"]: float(circle["r"]) for circle in circles(html, "region")}
    # us-east-1 and us-west4 have 32 GPUs each, eu-west-1 16, europe-west4 none.
    assert radius["aws/us-east-1"] == radius["gcp/us-west4"]
    assert radius["aws/us-east-1"] > radius["aws/eu-west-1"]
    assert radius["aws/eu-west-1"] > radius["gcp/europe-west4"]
    assert radius["gcp/europe-west4"] > 0


def test_map_shows_placed_replicas_per_region(superuser_client, map_fleet):
    html = superuser_client.get(INDEX).content.decode()

    replicas = {circle["data-region"]: int(circle["data-replicas"]) for circle in circles(html, "replicas")}
    assert replicas == {"aws/us-east-1": 2, "aws/eu-west-1": 1, "gcp/us-west4": 1}


def test_map_counts_open_outage_as_down(superuser_client, fleet, applied_plan):
    Outage.objects.create(
        scope=OutageScope.REGION,
        region=fleet.eu_west,
        source=OutageSource.DECLARED,
        reason="fibre cut",
        declared_by="ops",
    )

    html = superuser_client.get(INDEX).content.decode()

    health = {circle["data-region"]: circle["data-health"] for circle in circles(html, "region")}
    assert health["aws/eu-west-1"] == "down"


def test_map_draws_land_offline(superuser_client, fleet):
    html = superuser_client.get(INDEX).content.decode()

    assert re.search(r'<path id="mcm-land" d="M[-\d.,LMZ]{10000,}"', html)
    assert 'href="#mcm-land"' in section(html, "world-map")
    assert "http://" not in section(html, "world-map")
    assert "https://" not in section(html, "world-map")


def test_decode_arcs_sums_deltas_and_transforms():
    topology = {"transform": {"scale": [0.5, 0.25], "translate": [-180, -90]}, "arcs": [[[10, 20], [2, 4], [-1, 0]]]}

    assert worldmap.decode_arcs(topology) == [[(-175.0, -85.0), (-174.0, -84.0), (-174.5, -84.0)]]


def test_ring_points_reverses_negative_arc_index():
    arcs = [[(0.0, 0.0), (1.0, 0.0)], [(0.0, 1.0), (1.0, 0.0)]]

    # ~1 is arc 1 reversed, and the shared point (1, 0) appears once.
    assert worldmap.ring_points([0, ~1], arcs) == [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]


def test_ring_path_draws_antimeridian_ring_twice():
    ring = [(170.0, 60.0), (-170.0, 60.0), (-170.0, 70.0), (170.0, 70.0)]

    path = worldmap.ring_path(ring)

    assert path.count("M") == 2
    assert "M350.0,30.0L370.0,30.0" in path  # east of 180, clipped by the viewport
    assert "M-10.0,30.0L10.0,30.0" in path  # the same ring shifted west by 360 degrees


def test_land_path_covers_the_world():
    path = worldmap.land_path()

    assert path.count("M") > 100
    assert "NaN" not in path


def test_fit_viewbox_keeps_aspect_and_zooms():
    viewbox, zoom = worldmap.fit_viewbox([worldmap.project(50.1, 8.7), worldmap.project(41.9, 12.5)])

    x, y, width, height = (float(part) for part in viewbox.split())
    assert width >= 60.0  # the minimum width, or more when the points are taller than wide
    assert abs(height / width - 142 / 360) < 0.001
    assert abs(zoom - width / 360) < 0.0001  # the view box is rounded to 0.01 degree
    assert x <= 8.7 + 180 <= x + width


def test_fit_viewbox_without_points_shows_world():
    assert worldmap.fit_viewbox([]) == (worldmap.VIEWBOX, 1.0)


# Capacity tables.


def table_row(html: str, table_id: str, name: str) -> list[str]:
    table = section(html, table_id)
    match = re.search(rf'<tr data-name="{re.escape(name)}">(.*?)</tr>', table, re.S)
    assert match, f"no row {name!r} in #{table_id}"
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)]


def test_capacity_by_sku_counts_mcm_and_other_use(superuser_client, applied_plan):
    html = superuser_client.get(INDEX).content.decode()

    # name, GPUs, used, by MCM, by others, free, use, unmet replicas.
    # H100: 16 + 8 + 16 GPUs, 36 allocatable. acme/chat runs 3 replicas x 2 GPUs, and others use 4 + 8.
    assert table_row(html, "capacity-by-sku", "H100") == ["H100", "40", "18", "6", "12", "18", "50%", "0"]
    # L4: 8 + 32 GPUs. globex/search runs 1 replica x 1 GPU and misses 1, and others use 10.
    assert table_row(html, "capacity-by-sku", "L4") == ["L4", "40", "11", "1", "10", "29", "28%", "1"]


def test_provider_unmet_under_first_preference(superuser_client, applied_plan):
    html = superuser_client.get(INDEX).content.decode()

    assert table_row(html, "capacity-by-provider", "aws")[:4] == ["aws", "48", "18", "6"]
    assert table_row(html, "capacity-by-provider", "gcp")[:4] == ["gcp", "32", "11", "1"]
    # globex/search has no region preference, so its unmet replica has no provider.
    assert table_row(html, "capacity-by-provider", "(no preferred region)")[-1] == "1"


# Clusters in trouble.


@pytest.fixture
def troubled(fleet, applied_plan):
    """aws-euw1-a down, gcp-usw4-a silent for ten minutes, aws-use1-a drifting, aws-use1-b fresh and healthy."""
    now = timezone.now()
    Cluster.objects.filter(name="aws-euw1-a").update(
        health=ClusterHealth.DOWN, health_reason="3 failed reads in a row", last_heartbeat_at=now
    )
    Cluster.objects.filter(name="gcp-usw4-a").update(last_heartbeat_at=now - timedelta(minutes=10))
    Cluster.objects.filter(name__in=["aws-use1-a", "aws-use1-b"]).update(last_heartbeat_at=now)
    DriftRecord.objects.create(
        cluster=fleet.clusters["aws-use1-a"],
        deployment=applied_plan.assignments.first().deployment,
        kubernetes_name="acme-chat",
        desired_replicas=2,
        observed_replicas=1,
        ready_replicas=1,
        action="repair_failed",
    )
    return fleet


def trouble_rows(html: str) -> dict[str, str]:
    table = section(html, "trouble-clusters")
    return dict(re.findall(r'<tr data-cluster="([^"]+)" data-reasons="([^"]*)"', table))


def test_trouble_lists_down_stale_and_drifting(superuser_client, troubled):
    html = superuser_client.get(INDEX).content.decode()

    rows = trouble_rows(html)
    assert rows["aws-euw1-a"] == "down"
    assert rows["gcp-usw4-a"] == "stale"
    assert rows["aws-use1-a"] == "drifting"
    assert "aws-use1-b" not in rows
    table = section(html, "trouble-clusters")
    assert "3 failed reads in a row" in table
    assert "last telemetry 10 min ago" in table
    assert "1 open drift records" in table


def test_trouble_stale_follows_heartbeat_interval(superuser_client, settings, troubled):
    settings.MCM_HEARTBEAT_INTERVAL_S = 600  # ten minutes of silence is within three intervals

    rows = trouble_rows(superuser_client.get(INDEX).content.decode())

    assert "gcp-usw4-a" not in rows


def test_trouble_flags_endpoint_cluster_that_never_reported(superuser_client, troubled):
    Cluster.objects.filter(name="aws-use1-b").update(api_endpoint="https://127.0.0.1:6443", last_heartbeat_at=None)

    html = superuser_client.get(INDEX).content.decode()

    assert trouble_rows(html)["aws-use1-b"] == "stale"
    assert "no telemetry received yet" in section(html, "trouble-clusters")


def test_trouble_ignores_repaired_drift(superuser_client, troubled):
    DriftRecord.objects.update(repaired_at=timezone.now())

    assert "aws-use1-a" not in trouble_rows(superuser_client.get(INDEX).content.decode())


# Deployments, failovers and decisions.


def test_short_deployments_lists_unmet_and_degraded(superuser_client, applied_plan, acme_chat, globex_search):
    html = superuser_client.get(INDEX).content.decode()
    table = section(html, "short-deployments")
    assert 'data-deployment="globex/search"' in table
    assert 'data-deployment="acme/chat"' not in table
    assert reverse("admin:placements_deployment_overview", args=[globex_search.pk]) in table

    acme_chat.condition = DeploymentCondition.FAILOVER_BLOCKED
    acme_chat.condition_reason = "no capacity left in the allowed regions"
    acme_chat.save(update_fields=["condition", "condition_reason"])
    table = section(superuser_client.get(INDEX).content.decode(), "short-deployments")

    assert 'data-deployment="acme/chat"' in table
    assert "no capacity left in the allowed regions" in table
    # Higher tiers first: acme is premium, globex standard.
    assert table.index("acme/chat") < table.index("globex/search")


def test_pending_failover_listed_with_link(superuser_client, applied_plan, acme_chat, fleet):
    pending = FailoverRequest.objects.create(
        deployment=acme_chat,
        kind=FailoverKind.FAILOVER,
        replicas=1,
        reason="aws-euw1-a lost",
        deadline=timezone.now() + timedelta(minutes=10),
    )
    pending.clusters.set([fleet.clusters["aws-euw1-a"]])
    FailoverRequest.objects.create(
        deployment=acme_chat, kind=FailoverKind.FAILBACK, replicas=1, reason="back", status=FailoverStatus.APPROVED
    )

    table = section(superuser_client.get(INDEX).content.decode(), "pending-failovers")

    assert re.findall(r'data-failover="(\d+)"', table) == [str(pending.pk)]
    assert reverse("admin:placements_failoverrequest_change", args=[pending.pk]) in table
    assert "aws-euw1-a" in table


def test_latest_decisions_lists_newest_fifteen(superuser_client, applied_plan, acme_chat):
    for number in range(20):
        record_event(actor="scheduler", action=f"test.decision_{number:02}", subject=acme_chat)

    listing = section(superuser_client.get(INDEX).content.decode(), "latest-decisions")

    actions = re.findall(r'data-action="([^"]+)"', listing)
    assert actions == [f"test.decision_{number:02}" for number in range(19, 4, -1)]
    assert reverse("admin:placements_deployment_overview", args=[acme_chat.pk]) in listing


def test_latest_decisions_leave_out_routine_steps(superuser_client, applied_plan, acme_chat):
    record_event(actor="ops", action="cluster.draining", subject=("fleet.cluster", 1), reason="Maintenance.")
    for _ in range(20):
        record_event(actor="executor", action="execution_step.executed", subject=acme_chat)
    record_event(actor="ops", action="plan.dry_run", subject=applied_plan)

    listing = section(superuser_client.get(INDEX).content.decode(), "latest-decisions")

    actions = re.findall(r'data-action="([^"]+)"', listing)
    assert "cluster.draining" in actions
    assert "execution_step.executed" not in actions
    assert "plan.dry_run" not in actions


def test_decision_about_every_deployment_has_no_link(superuser_client, applied_plan):
    record_event(actor="demo", action="demo.seeded", subject=("placements.deployment", "*"))

    response = superuser_client.get(INDEX)

    assert response.status_code == 200
    listing = section(response.content.decode(), "latest-decisions")
    assert "placements.deployment *" in listing


# Background health.


def test_background_health_unavailable_without_module(superuser_client, fleet, no_background_health):
    box = section(superuser_client.get(INDEX).content.decode(), "background-health")

    assert 'data-status="unavailable"' in box
    assert "unavailable" in box


def test_background_health_shows_late_and_backlog(superuser_client, fleet, background_health):
    box = section(superuser_client.get(INDEX).content.decode(), "background-health")

    assert re.findall(r'data-schedule="([^"]+)"', box) == ["plan placements"]
    assert 'data-backlog="7"' in box


def test_background_health_hidden_without_permission(client, compliance_officer, fleet, background_health):
    html = login(client, compliance_officer).get(INDEX).content.decode()

    assert 'id="background-health"' not in html


def test_background_health_reads_beat_schedules(superuser_client, fleet):
    call_command("setup_schedules", stdout=io.StringIO())

    box = section(superuser_client.get(INDEX).content.decode(), "background-health")

    assert "on time" in box
    assert f"{PeriodicTask.objects.count()} schedules" in box


# Refresh.


def test_fragment_returns_refreshed_panels(superuser_client, troubled):
    first = superuser_client.get(FRAGMENT)
    assert first.status_code == 200
    assert "no-store" in first["Cache-Control"]
    assert "<html" not in first.content.decode()
    assert "aws-use1-b" not in trouble_rows(first.content.decode())

    Cluster.objects.filter(name="aws-use1-b").update(health=ClusterHealth.SUSPECT, health_reason="timed out")
    second = superuser_client.get(FRAGMENT).content.decode()

    assert trouble_rows(second)["aws-use1-b"] == "suspect"
    assert 'id="world-map"' in second
    assert 'id="dashboard-refreshed"' in second


def test_index_polls_fragment(superuser_client, fleet):
    html = superuser_client.get(INDEX).content.decode()

    assert f'data-refresh-url="{FRAGMENT}"' in html
    assert 'data-refresh-s="15"' in html
    assert "setInterval(refresh" in html


# Query count.


def add_regions(fleet, plan, numbers) -> None:
    """Add a region per number with two stale clusters, H100 capacity, a placed replica and open drift on each."""
    deployment = plan.outcomes.first().deployment
    long_ago = timezone.now() - timedelta(hours=1)
    for number in numbers:
        region = Region.objects.create(
            provider=fleet.gcp,
            code=f"test-{number}",
            latitude=10.0 + number,
            longitude=20.0 + number,
            location_source=LocationSource.BUILT_IN,
        )
        for suffix in ("a", "b"):
            cluster = Cluster.objects.create(
                name=f"gcp-test{number}-{suffix}", region=region, last_heartbeat_at=long_ago
            )
            ClusterCapacity.objects.create(
                cluster=cluster, sku=fleet.h100, total_gpus=8, allocatable_gpus=8, hourly_price_per_gpu=Decimal("2.00")
            )
            Assignment.objects.create(plan=plan, deployment=deployment, cluster=cluster, sku=fleet.h100, replicas=1)
            DriftRecord.objects.create(
                cluster=cluster,
                kubernetes_name="acme-chat",
                desired_replicas=1,
                observed_replicas=0,
                ready_replicas=0,
                action="created",
            )


def dashboard_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(INDEX).status_code == 200
    return len(queries)


def test_query_count_does_not_grow_with_fleet(superuser_client, fleet, applied_plan):
    call_command("setup_schedules", stdout=io.StringIO())
    record_event(actor="scheduler", action="plan.applied", subject=applied_plan)
    FailoverRequest.objects.create(
        deployment=applied_plan.outcomes.first().deployment, kind="failover", replicas=1, reason="lost"
    )
    add_regions(fleet, applied_plan, range(2))
    small = dashboard_queries(superuser_client)

    add_regions(fleet, applied_plan, range(2, 12))
    large = dashboard_queries(superuser_client)

    assert large == small


@pytest.mark.parametrize("persona", ["superuser", "ops", "auditor"])
def test_query_count_bounded(client, request, fleet, applied_plan, django_assert_max_num_queries, persona):
    # Background health reads one row per beat schedule: setup_schedules creates 8.
    call_command("setup_schedules", stdout=io.StringIO())
    add_regions(fleet, applied_plan, range(6))
    login(client, request.getfixturevalue(persona))

    with django_assert_max_num_queries(30):
        assert client.get(INDEX).status_code == 200


def test_app_index_pages_keep_django_layout(superuser_client, applied_plan):
    for app_label in ("placements", "fleet", "compliance", "tasks"):
        response = superuser_client.get(f"/admin/{app_label}/")

        assert response.status_code == 200
        html = response.content.decode()
        assert 'id="world-map"' not in html
        assert "Figures as of" not in html
