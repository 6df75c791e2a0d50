"""Admin previews: draining or cordoning clusters, declaring an outage and applying a re-plan show the
dry-run plan's difference first, change nothing until the operator confirms, and apply on confirmation."""

from collections import defaultdict
from html.parser import HTMLParser

import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages

from compliance.models import AuditEvent
from compliance.roles import AUDITOR
from fleet import operations
from fleet.models import Alert, Cluster, ClusterState, Outage
from placements.models import Assignment, DeploymentOutcome, FailoverRequest, PlacementPlan, PlanStatus
from placements.tasks import execute_plan
from tasks.tasks import plan_placements

pytestmark = pytest.mark.django_db

CLUSTERS = "/admin/fleet/cluster/"
OUTAGE_ADD = "/admin/fleet/outage/add/"
PREVIEW = "/admin/placements/placementplan/preview/"
APPLY = "/admin/placements/placementplan/apply-replan/"
DIFF_IDS = ("preview-totals", "preview-by-provider", "preview-by-region", "preview-unmet-by-tier")


# Fixtures.


@pytest.fixture
def current_plan(applied_plan):
    """The applied plan of the shared fixture, with the summary the scheduler stores for such a plan."""
    applied_plan.summary = {
        "placed_replicas": 4,
        "unmet_replicas": 1,
        "replicas_by_provider": {"aws": 3, "gcp": 1},
        "unmet_by_tier": {"critical": 0, "premium": 0, "standard": 1, "best_effort": 0},
    }
    applied_plan.save(update_fields=["summary"])
    return applied_plan


@pytest.fixture
def ops_client(client, ops):
    client.force_login(ops)
    return client


@pytest.fixture
def auditor_client(client, django_user_model):
    user = django_user_model.objects.create_user(username="audrey", is_staff=True)
    user.groups.add(Group.objects.get(name=AUDITOR))
    client.force_login(user)
    return client


@pytest.fixture
def replans(monkeypatch) -> list[dict]:
    """Record each re-plan a control enqueues instead of sending it to the broker."""
    requested: list[dict] = []
    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: requested.append(kwargs))
    return requested


@pytest.fixture
def executions(monkeypatch) -> list[tuple]:
    """Record each plan execution an applied re-plan enqueues."""
    enqueued: list[tuple] = []
    monkeypatch.setattr(execute_plan, "apply_async", lambda *args, **kwargs: enqueued.append(args))
    return enqueued


# Helpers.


class TableReader(HTMLParser):
    """Collect the cells of each row of the tables with the given ids, keyed by the row's first cell."""

    def __init__(self, table_ids):
        super().__init__()
        self.table_ids = set(table_ids)
        self.tables: dict[str, dict[str, list[str]]] = {table_id: {} for table_id in table_ids}
        self.table = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id") in self.table_ids:
            self.table = attributes["id"]
        elif self.table and tag == "tr":
            self.row = []
        elif self.row is not None and tag == "td":
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        elif tag == "td" and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row:
            self.tables[self.table][self.row[0]] = self.row[1:]
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def diff_tables(response) -> dict[str, dict[str, list[str]]]:
    reader = TableReader(["preview-by-provider", "preview-by-region", "preview-unmet-by-tier"])
    reader.feed(response.content.decode())
    return reader.tables


def moves_in_database(before: PlacementPlan, after: PlacementPlan, level: str) -> dict[str, list[str]]:
    """Compute [net, added, removed] per provider or region from the two plans' assignment rows."""
    placements = []
    for plan in (before, after):
        rows = Assignment.objects.filter(plan=plan).values_list(
            "deployment_id",
            "cluster_id",
            "sku_id",
            "replicas",
            "cluster__region__provider__name",
            "cluster__region__code",
        )
        placement = {}
        for deployment, cluster, sku, replicas, provider, code in rows:
            location = provider if level == "provider" else f"{provider}/{code}"
            placement[(deployment, cluster, sku)] = (replicas, location)
        placements.append(placement)
    old, new = placements
    moved: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in old.keys() | new.keys():
        location = (new.get(key) or old.get(key))[1]
        delta = new.get(key, (0,))[0] - old.get(key, (0,))[0]
        if delta:
            moved[location][0] += delta
            moved[location][1 if delta > 0 else 2] += abs(delta)
    return {location: [f"{net:+d}", str(added), str(removed)] for location, (net, added, removed) in moved.items()}


def unmet_by_tier_in_database(plan: PlacementPlan) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for tier, unmet in DeploymentOutcome.objects.filter(plan=plan).values_list(
        "deployment__customer__tier", "unmet_replicas"
    ):
        totals[tier] += unmet
    return totals


def fleet_state() -> dict:
    """Everything a preview must leave alone: cluster states, outages, alerts, failover requests, applied plans
    and audit events."""
    return {
        "clusters": dict(Cluster.objects.values_list("name", "state")),
        "outages": list(Outage.objects.values_list("pk", "cleared_at")),
        "alerts": Alert.objects.count(),
        "failover_requests": FailoverRequest.objects.count(),
        "applied": list(PlacementPlan.objects.filter(status=PlanStatus.APPLIED).values_list("pk", flat=True)),
        "events": list(AuditEvent.objects.exclude(action="plan.dry_run").values_list("pk", flat=True)),
    }


def dry_run_plan(response) -> PlacementPlan:
    return PlacementPlan.objects.get(pk=response.context["preview"]["plan_id"], status=PlanStatus.DRY_RUN)


def run_action(client, action: str, clusters, **extra):
    """Post a cluster action from the changelist; ``extra`` adds the confirmation page's fields."""
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [cluster.pk for cluster in clusters], **extra}
    if not extra:
        data["index"] = 0
    return client.post(CLUSTERS, data)


def assert_shows_diff(response, current: PlacementPlan, *, confirm: bool = True) -> PlacementPlan:
    """Check the four diff tables against the plans' rows, and the confirm button; return the dry-run plan."""
    text = response.content.decode()
    for element_id in DIFF_IDS:
        assert f'id="{element_id}"' in text
    assert ('<input type="submit" name="confirm"' in text) is confirm
    dry_run = dry_run_plan(response)
    tables = diff_tables(response)
    assert tables["preview-by-provider"] == moves_in_database(current, dry_run, "provider")
    assert tables["preview-by-region"] == moves_in_database(current, dry_run, "region")
    after = unmet_by_tier_in_database(dry_run)
    for tier, before in current.summary["unmet_by_tier"].items():
        assert tables["preview-unmet-by-tier"][tier] == [str(before), str(after[tier])]
    return dry_run


# Drain and cordon.


def test_drain_page_shows_diff(ops_client, current_plan, fleet):
    response = run_action(ops_client, "drain_clusters", [fleet.clusters["aws-use1-a"]])

    assert response.status_code == 200
    dry_run = assert_shows_diff(response, current_plan)
    assert dry_run.parameters["exclusions"]["drain_clusters"] == ["aws-use1-a"]
    # The current plan runs 2 replicas on aws-use1-a; its region's other cluster is cordoned.
    assert diff_tables(response)["preview-by-region"]["aws/us-east-1"] == ["-2", "0", "2"]
    assert not Assignment.objects.filter(plan=dry_run, cluster__name="aws-use1-a").exists()
    assert "reason" in response.context["form"].fields


def test_drain_page_changes_nothing(ops_client, current_plan, fleet, replans):
    before = fleet_state()

    response = run_action(ops_client, "drain_clusters", [fleet.clusters["aws-use1-a"]])

    assert response.status_code == 200
    assert fleet_state() == before
    assert replans == []
    assert AuditEvent.objects.filter(action="plan.dry_run").count() == 1


def test_drain_page_with_blank_reason_changes_nothing(ops_client, current_plan, fleet, replans):
    before = fleet_state()

    response = run_action(ops_client, "drain_clusters", [fleet.clusters["aws-use1-a"]], confirm="Drain", reason=" ")

    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert response.context["preview"] is not None
    assert fleet_state() == before


def test_drain_confirmation_applies(ops_client, ops, current_plan, fleet, replans, django_capture_on_commit_callbacks):
    cluster = fleet.clusters["aws-use1-a"]

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(
            ops_client, "drain_clusters", [cluster], confirm="Drain clusters", reason="Kernel update."
        )

    assert response.status_code == 302
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.DRAINING
    event = AuditEvent.objects.get(action="cluster.draining")
    assert event.actor == ops
    assert event.reason == "Kernel update."
    assert replans == [{"trigger": "operator"}]
    # Confirming applies the drain without another dry run.
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()


def test_drain_page_lists_rejected_cluster(ops_client, current_plan, fleet):
    Cluster.objects.filter(name="gcp-usw4-a").update(state=ClusterState.DRAINING)
    selected = [fleet.clusters["aws-use1-a"], fleet.clusters["gcp-usw4-a"]]

    response = run_action(ops_client, "drain_clusters", selected)

    assert response.status_code == 200
    assert [cluster.name for cluster in response.context["skipped"]] == ["gcp-usw4-a"]
    assert "gcp-usw4-a is draining" in response.content.decode()
    assert dry_run_plan(response).parameters["exclusions"]["drain_clusters"] == ["aws-use1-a"]


def test_drain_page_without_drainable_cluster(ops_client, current_plan, fleet):
    Cluster.objects.filter(name="gcp-usw4-a").update(state=ClusterState.DRAINING)

    response = run_action(ops_client, "drain_clusters", [fleet.clusters["gcp-usw4-a"]])

    assert response.status_code == 200
    assert response.context["preview"] is None
    assert "No selected cluster can drain" in response.content.decode()
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()


def test_cordon_page_shows_diff(ops_client, current_plan, fleet, replans):
    before = fleet_state()

    response = run_action(ops_client, "cordon_clusters", [fleet.clusters["aws-use1-a"]])

    assert response.status_code == 200
    dry_run = assert_shows_diff(response, current_plan)
    assert dry_run.parameters["exclusions"]["cordon_clusters"] == ["aws-use1-a"]
    # A cordoned cluster keeps the replicas it runs.
    assert Assignment.objects.filter(plan=dry_run, cluster__name="aws-use1-a").get().replicas == 2
    assert fleet_state() == before


def test_uncordon_page_has_no_preview(ops_client, current_plan, fleet):
    response = run_action(ops_client, "uncordon_clusters", [fleet.clusters["aws-use1-b"]])

    assert response.status_code == 200
    assert "preview" not in response.context
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()


# Outages.


def outage_form(**overrides) -> dict:
    return {"scope": "provider", "cluster": "", "region": "", "provider": "", "reason": "", **overrides}


def test_outage_add_shows_preview(ops_client, current_plan, fleet, replans):
    before = fleet_state()

    response = ops_client.post(OUTAGE_ADD, outage_form(provider=fleet.aws.pk, reason="AWS status page: down."))

    assert response.status_code == 200
    assert response.templates[0].name == "admin/fleet/outage_confirm.html"
    dry_run = assert_shows_diff(response, current_plan)
    assert dry_run.parameters["exclusions"]["providers"] == ["aws"]
    assert diff_tables(response)["preview-by-provider"]["aws"] == ["-3", "0", "3"]
    text = response.content.decode()
    assert 'name="reason" value="AWS status page: down."' in text
    assert "aws-euw1-a, aws-use1-a, aws-use1-b" in text
    assert fleet_state() == before
    assert not Outage.objects.exists()
    assert replans == []


@pytest.mark.parametrize(
    ("scope", "target", "what_if", "region", "expected"),
    [
        ("region", "eu_west", {"regions": ["aws/eu-west-1"]}, "aws/eu-west-1", ["-1", "0", "1"]),
        ("cluster", "aws-use1-a", {"lost_clusters": ["aws-use1-a"]}, "aws/us-east-1", ["-2", "0", "2"]),
    ],
)
def test_outage_preview_of_region_and_cluster(
    ops_client, current_plan, fleet, scope, target, what_if, region, expected
):
    row = getattr(fleet, target) if scope == "region" else fleet.clusters[target]

    response = ops_client.post(OUTAGE_ADD, outage_form(scope=scope, **{scope: row.pk, "reason": "Power loss."}))

    assert response.status_code == 200
    dry_run = assert_shows_diff(response, current_plan)
    exclusions = dry_run.parameters["exclusions"]
    for key, names in what_if.items():
        assert exclusions[key] == names
    assert diff_tables(response)["preview-by-region"][region] == expected
    assert not Outage.objects.exists()


def test_outage_confirmation_declares(
    ops_client, ops, current_plan, fleet, replans, django_capture_on_commit_callbacks
):
    form = outage_form(provider=fleet.aws.pk, reason="AWS status page: down.", confirm="Declare the outage")

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(OUTAGE_ADD, form)

    assert response.status_code == 302
    outage = Outage.objects.get()
    assert outage.provider == fleet.aws
    assert outage.declared_by == ops.username
    assert AuditEvent.objects.get(action="outage.declared").actor == ops
    assert Alert.objects.get(kind="outage.open").resolved_at is None
    assert replans == [{"trigger": "operator"}]
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()


@pytest.mark.parametrize("confirm", [{}, {"confirm": "Declare the outage"}])
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"provider": "9999"}, "provider", "provider '9999' not found"),
        ({"scope": "region", "region": "9999"}, "region", "region '9999' not found"),
        ({"scope": "cluster", "cluster": "9999"}, "cluster", "cluster '9999' not found"),
        ({"scope": "galaxy"}, "scope", "scope 'galaxy' is not valid"),
    ],
)
def test_outage_unknown_target_rejected(ops_client, current_plan, fleet, replans, confirm, overrides, field, message):
    before = fleet_state()

    response = ops_client.post(OUTAGE_ADD, outage_form(reason="x", **overrides, **confirm))

    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    assert fleet_state() == before
    assert not Outage.objects.exists()
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()


def test_outage_add_form_says_preview_comes_first(ops_client, fleet):
    response = ops_client.get(OUTAGE_ADD)

    assert response.status_code == 200
    assert "Preview the outage" in response.content.decode()


# Re-plan.


def test_apply_replan_shows_preview_first(ops_client, current_plan, fleet, executions):
    before = fleet_state()

    response = ops_client.post(APPLY)

    assert response.status_code == 200
    dry_run = assert_shows_diff(response, current_plan)
    assert dry_run.parameters["exclusions"]["providers"] == []
    text = response.content.decode()
    assert f'name="previewed_plan" value="{dry_run.pk}"' in text
    assert "solved again when you confirm" in text
    assert fleet_state() == before
    assert executions == []


def test_apply_replan_confirmation_applies(
    ops_client, ops, current_plan, fleet, executions, django_capture_on_commit_callbacks
):
    previewed = operations.preview_replan(actor=ops)

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(APPLY, {"confirm": "Apply the re-plan", "previewed_plan": previewed["plan_id"]})

    plan = PlacementPlan.objects.get(status=PlanStatus.APPLIED)
    assert response.status_code == 302
    assert plan.pk != current_plan.pk
    assert executions == [((plan.pk,),)]
    assert AuditEvent.objects.get(action="plan.applied").actor == ops
    texts = [str(message) for message in get_messages(response.wsgi_request)]
    assert f"places every replica as the previewed dry run v{previewed['plan_version']}" in " ".join(texts)


def test_apply_replan_reports_change_since_preview(
    ops_client, ops, current_plan, fleet, executions, replans, django_capture_on_commit_callbacks
):
    previewed = operations.preview_replan(actor=ops)
    operations.drain(fleet.clusters["aws-use1-a"], actor=ops, reason="Kernel update.")

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(APPLY, {"confirm": "Apply the re-plan", "previewed_plan": previewed["plan_id"]})

    assert response.status_code == 302
    texts = " ".join(str(message) for message in get_messages(response.wsgi_request))
    assert f"differs from the previewed dry run v{previewed['plan_version']}" in texts


def test_preview_page_shows_moves(ops_client, current_plan, fleet):
    response = ops_client.post(PREVIEW, {"drain_clusters": ["aws-use1-a"]})

    assert response.status_code == 200
    assert_shows_diff(response, current_plan, confirm=False)
    assert PlacementPlan.objects.get(status=PlanStatus.APPLIED) == current_plan


# Permissions.


def test_auditor_gets_no_cluster_preview(auditor_client, current_plan, fleet):
    cluster = fleet.clusters["aws-use1-a"]

    page = auditor_client.get(CLUSTERS)
    response = run_action(auditor_client, "drain_clusters", [cluster])
    confirmed = run_action(auditor_client, "drain_clusters", [cluster], confirm="Drain clusters", reason="x")

    assert page.status_code == 200
    assert b"drain_clusters" not in page.content
    # The admin rejects an action the user lacks and shows the changelist again, with no confirmation page.
    for attempt in (response, confirmed):
        assert attempt.status_code in (200, 302)
        assert "admin/fleet/reason_action.html" not in [template.name for template in attempt.templates]
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("get", OUTAGE_ADD, {}),
        ("post", OUTAGE_ADD, {"scope": "provider", "provider": "1", "reason": "x"}),
        ("post", OUTAGE_ADD, {"scope": "provider", "provider": "1", "reason": "x", "confirm": "yes"}),
        ("post", APPLY, {}),
        ("post", APPLY, {"confirm": "yes"}),
        ("post", PREVIEW, {}),
    ],
)
def test_auditor_gets_403_on_previews(auditor_client, current_plan, fleet, method, url, data):
    before = fleet_state()

    response = getattr(auditor_client, method)(url, data)

    assert response.status_code == 403
    assert fleet_state() == before
    assert not PlacementPlan.objects.filter(status=PlanStatus.DRY_RUN).exists()
