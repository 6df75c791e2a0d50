"""Customer isolation across the whole API: a member of acme never reads or changes globex's objects.

The table below names, for every route and HTTP method in ``mcm_site.api_urls``, what a customer
may do there. ``test_every_endpoint_is_covered`` fails when a route or method is added without a
row, so a new endpoint cannot be forgotten. Every case runs as alice (acme's member, a token
client) against one world built by the ``world`` fixture from the personas in ``tests/conftest.py``;
after each request every row of globex is compared with its state before the request.
"""

from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.forms.models import model_to_dict
from django.urls import URLPattern, URLResolver
from django.utils import timezone

from compliance.lock_services import create_lock
from compliance.models import AuditEvent, LockChange, PlacementLock
from fleet.alerts import raise_alert
from fleet.models import AlertSeverity, Cluster, Outage, OutageScope, OutageSource
from mcm_site import api_urls
from placements.models import (
    ApiToken,
    AutoscalingPolicy,
    Deployment,
    FailoverKind,
    FailoverRequest,
    ScalingDecision,
    TrafficSample,
)
from placements.tokens import create_api_token
from placements.traffic import record_traffic

pytestmark = pytest.mark.django_db

API = "/api/v1/"

# What a customer gets from a route:
LIST = "list"  # 200, own objects listed, none of globex's
HIDDEN = "hidden"  # globex's object: 404, nothing changes
FORBIDDEN = "forbidden"  # staff or permission only: 403, nothing changes
SHARED = "shared"  # the shared fleet inventory or a route without objects: 200, carries no customer's objects
CREATE = "create"  # a create naming globex, or a create of the requester's own row: nothing of globex changes


@dataclass(frozen=True)
class Case:
    name: str  # the route name in mcm_site.api_urls
    method: str
    kind: str
    path: str  # with {placeholders} filled from the world's ids
    body: dict = field(default_factory=dict)
    status: int | None = None  # overrides the kind's status
    own_path: str | None = None  # the same request on acme's own object, which must succeed (GET only)


CASES = [
    Case("api-root", "get", SHARED, ""),
    Case("ping", "get", SHARED, "ping"),
    # The fleet inventory is open to every signed-in user; its state changes are staff-only.
    Case("provider-list", "get", SHARED, "providers/"),
    Case("provider-detail", "get", SHARED, "providers/{provider}/"),
    Case("region-list", "get", SHARED, "regions/"),
    Case("region-detail", "get", SHARED, "regions/{region}/"),
    Case("gpu-sku-list", "get", SHARED, "gpu-skus/"),
    Case("gpu-sku-detail", "get", SHARED, "gpu-skus/{sku}/"),
    Case("cluster-list", "get", SHARED, "clusters/"),
    Case("cluster-detail", "get", SHARED, "clusters/{cluster}/"),
    Case("cluster-cordon", "post", FORBIDDEN, "clusters/{cluster}/cordon/", {"reason": "r"}),
    Case("cluster-uncordon", "post", FORBIDDEN, "clusters/{cluster}/uncordon/", {"reason": "r"}),
    Case("cluster-drain", "post", FORBIDDEN, "clusters/{cluster}/drain/", {"reason": "r"}),
    Case("capacity-list", "get", SHARED, "capacities/"),
    Case("capacity-detail", "get", SHARED, "capacities/{capacity}/"),
    # Deployments.
    Case("deployment-list", "get", LIST, "deployments/"),
    Case("deployment-list", "get", LIST, "deployments/?customer=globex"),
    Case("deployment-list", "get", LIST, "deployments/?customer_id={globex}"),
    Case("deployment-list", "get", LIST, "deployments/?q=search"),
    Case("deployment-list", "post", CREATE, "deployments/", {"customer": "globex", "name": "x", "sku": "L4"}, 400),
    Case("deployment-detail", "get", HIDDEN, "deployments/{b_deployment}/", own_path="deployments/{a_deployment}/"),
    Case("deployment-detail", "put", HIDDEN, "deployments/{b_deployment}/", {"name": "search", "sku": "H100"}),
    Case("deployment-detail", "patch", HIDDEN, "deployments/{b_deployment}/", {"desired_replicas": 4}),
    Case("deployment-detail", "delete", HIDDEN, "deployments/{b_deployment}/"),
    # Read-only views of one deployment: globex's is hidden, acme's own is served.
    *(
        Case(
            name,
            "get",
            HIDDEN,
            f"deployments/{{b_deployment}}/{suffix}",
            own_path=f"deployments/{{a_deployment}}/{suffix}",
        )
        for name, suffix in (
            ("deployment-explain", "explain/"),
            ("deployment-explanation", "explanation/"),
            ("deployment-placement", "placement/"),
            ("deployment-scaling", "scaling/"),
            ("deployment-route", "route/?latitude=50&longitude=8"),
            ("deployment-route-no-slash", "route?latitude=50&longitude=8"),
            ("deployment-traffic", "traffic/"),
        )
    ),
    # Plans span every customer: staff only.
    Case("plan-list", "get", FORBIDDEN, "plans/"),
    Case("plan-detail", "get", FORBIDDEN, "plans/{plan}/"),
    Case("plan-preview", "post", FORBIDDEN, "plans/preview/", {}),
    # Failover requests.
    Case("failover-request-list", "get", LIST, "failover-requests/"),
    Case("failover-request-list", "get", LIST, "failover-requests/?customer=globex"),
    Case("failover-request-list", "get", LIST, "failover-requests/?deployment={b_deployment}"),
    Case(
        "failover-request-detail",
        "get",
        HIDDEN,
        "failover-requests/{b_failover}/",
        own_path="failover-requests/{a_failover}/",
    ),
    Case("failover-request-approve", "post", FORBIDDEN, "failover-requests/{b_failover}/approve/", {"reason": "r"}),
    Case("failover-request-reject", "post", FORBIDDEN, "failover-requests/{b_failover}/reject/", {"reason": "r"}),
    # Staff-only records.
    Case("outage-list", "get", FORBIDDEN, "outages/"),
    Case("outage-list", "post", FORBIDDEN, "outages/", {"scope": "cluster", "target": "aws-use1-a", "reason": "r"}),
    Case("outage-detail", "get", FORBIDDEN, "outages/{outage}/"),
    Case("outage-clear", "post", FORBIDDEN, "outages/{outage}/clear/", {"reason": "r"}),
    Case("alert-list", "get", FORBIDDEN, "alerts/"),
    Case("alert-detail", "get", FORBIDDEN, "alerts/{alert}/"),
    Case("audit-event-list", "get", FORBIDDEN, "audit-events/"),
    Case("audit-event-detail", "get", FORBIDDEN, "audit-events/{b_event}/"),
    Case("audit-event-export", "get", FORBIDDEN, "audit-events/export/"),
    Case("event-ingest", "post", FORBIDDEN, "events", {"events": []}),
    Case("event-ingest-slash", "post", FORBIDDEN, "events/", {"events": []}),
    # Locks: customers read their own; changes need the compliance permissions.
    Case("lock-list", "get", LIST, "locks/"),
    Case("lock-list", "post", FORBIDDEN, "locks/", {"customer": "globex", "allowed_providers": ["aws"], "reason": "r"}),
    Case("lock-detail", "get", HIDDEN, "locks/{b_lock}/", own_path="locks/{a_lock}/"),
    Case("lock-detail", "get", HIDDEN, "locks/{b_deployment_lock}/"),
    Case(
        "lock-detail", "put", FORBIDDEN, "locks/{b_lock}/", {"customer": "globex", "reason": "r", "change_reason": "r"}
    ),
    Case("lock-detail", "patch", FORBIDDEN, "locks/{b_lock}/", {"allowed_providers": [], "change_reason": "r"}),
    Case("lock-detail", "delete", FORBIDDEN, "locks/{b_lock}/?change_reason=r"),
    Case("lock-changes", "get", HIDDEN, "locks/{b_lock}/changes/", own_path="locks/{a_lock}/changes/"),
    # Tokens: each user sees and revokes their own.
    Case("api-token-list", "get", LIST, "tokens/"),
    Case("api-token-list", "post", CREATE, "tokens/", {"name": "mine", "user": "gary"}, 201),
    Case("api-token-detail", "get", HIDDEN, "tokens/{b_token}/", own_path="tokens/{a_token}/"),
    Case("api-token-detail", "delete", HIDDEN, "tokens/{b_token}/", {"reason": "r"}),
]

STATUS = {LIST: 200, HIDDEN: 404, FORBIDDEN: 403, SHARED: 200}
# For each list route: the world keys of acme's row and of globex's row that it lists.
LISTED = {
    "deployment-list": ("a_deployment", "b_deployment"),
    "failover-request-list": ("a_failover", "b_failover"),
    "lock-list": ("a_lock", "b_lock"),
    "api-token-list": ("a_token", "b_token"),
}


def api_routes() -> set[tuple[str, str]]:
    """Return every (route name, method) that ``mcm_site.api_urls`` serves, format suffixes folded in."""
    routes = set()
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern), f"{pattern!r}: nested URL includes are not enumerated here"
        view = pattern.callback
        actions = getattr(view, "actions", None)
        if actions is not None:
            # DRF adds "head" to a viewset's actions the first time it serves a request, so this
            # set would depend on the tests that ran before; HEAD is served as GET is.
            methods = set(actions) - {"head"}
        else:
            view_class = view.view_class
            methods = {m for m in view_class.http_method_names if hasattr(view_class, m)} - {"options", "head"}
        routes |= {(pattern.name, method) for method in methods}
    assert not any(isinstance(pattern, URLResolver) for pattern in api_urls.urlpatterns)
    return routes


def test_every_endpoint_is_covered():
    covered = {(case.name, case.method) for case in CASES}
    missing = sorted(api_routes() - covered)
    assert not missing, f"API routes without an isolation case in CASES: {missing}"
    unknown = sorted(covered - api_routes())
    assert not unknown, f"CASES rows for routes the API does not serve: {unknown}"


@pytest.fixture
def world(fleet, applied_plan, acme, globex, acme_chat, globex_search, acme_member, globex_member, compliance_officer):
    """Objects of both customers on every endpoint, and the ids the cases' paths name."""
    failovers = {}
    for key, deployment in (("a_failover", acme_chat), ("b_failover", globex_search)):
        failovers[key] = FailoverRequest.objects.create(
            deployment=deployment, kind=FailoverKind.FAILOVER, replicas=1, reason="aws-use1-a lost"
        )
        failovers[key].clusters.set([fleet.clusters["aws-use1-a"]])
        ScalingDecision.objects.create(
            deployment=deployment, direction="up", from_replicas=1, to_replicas=2, reason="busy", plan=applied_plan
        )
    now = timezone.now()
    record_traffic(
        [
            {
                "deployment_id": deployment.pk,
                "cluster_id": fleet.clusters["aws-use1-a"].pk,
                "origin": "US",
                "requests_per_second": 5.0,
                "in_flight": 1.0,
                "observed_at": now - timedelta(seconds=5),
            }
            for deployment in (acme_chat, globex_search)
        ],
        source="push",
    )
    locks = {
        "a_lock": create_lock(
            actor=compliance_officer, data={"customer": acme, "allowed_providers": ["aws", "gcp"], "reason": "a"}
        ),
        "b_lock": create_lock(
            actor=compliance_officer, data={"customer": globex, "allowed_providers": ["aws", "gcp"], "reason": "b"}
        ),
        "b_deployment_lock": create_lock(
            actor=compliance_officer, data={"deployment": globex_search, "allowed_providers": ["gcp"], "reason": "b"}
        ),
    }
    tokens = {
        "a_token": create_api_token(actor=acme_member, user=acme_member, name="ci")[0],
        "b_token": create_api_token(actor=globex_member, user=globex_member, name="ci")[0],
    }
    outage = Outage.objects.create(
        scope=OutageScope.CLUSTER,
        cluster=fleet.clusters["gcp-usw4-a"],
        source=OutageSource.DECLARED,
        reason="maintenance",
        declared_by="ops",
    )
    alert = raise_alert("deployment.short", AlertSeverity.WARNING, globex_search, "globex/search is short")
    ids = {
        "globex": globex.pk,
        "provider": fleet.aws.pk,
        "region": fleet.us_east.pk,
        "sku": fleet.h100.pk,
        "cluster": fleet.clusters["aws-use1-a"].pk,
        "capacity": fleet.clusters["aws-use1-a"].capacities.first().pk,
        "a_deployment": acme_chat.pk,
        "b_deployment": globex_search.pk,
        "plan": applied_plan.pk,
        "outage": outage.pk,
        "alert": alert.pk,
        "b_event": AuditEvent.objects.filter(action="deployment.created").latest("pk").pk,
        **{key: row.pk for key, row in {**failovers, **locks, **tokens}.items()},
    }
    return ids


def globex_state(world) -> dict:
    """Every stored row that belongs to globex or that a case could change, as plain values."""
    deployments = Deployment.objects.filter(customer_id=world["globex"])

    def rows(queryset):
        return sorted((model_to_dict(row) for row in queryset), key=lambda row: row["id"])

    return {
        "deployments": rows(deployments),
        "preferences": sorted(deployments.values_list("region_preferences__region", flat=True), key=str),
        "autoscaling": list(AutoscalingPolicy.objects.filter(deployment__in=deployments).values()),
        "failovers": list(FailoverRequest.objects.filter(deployment__in=deployments).order_by("pk").values()),
        "locks": list(PlacementLock.objects.filter(pk__in=[world["b_lock"], world["b_deployment_lock"]]).values()),
        "lock_changes": LockChange.objects.count(),
        "tokens": list(ApiToken.objects.filter(user__customers=world["globex"]).order_by("pk").values()),
        "traffic": TrafficSample.objects.filter(deployment__in=deployments).count(),
        "decisions": ScalingDecision.objects.filter(deployment__in=deployments).count(),
        "outages": list(Outage.objects.order_by("pk").values()),
        "clusters": sorted(Cluster.objects.values_list("name", "state")),
        "events": AuditEvent.objects.exclude(actor_label="alice").count(),
    }


def listed_ids(response) -> set[int]:
    body = response.json()
    rows = body["results"] if isinstance(body, dict) else body
    return {row["id"] for row in rows}


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.method}-{case.path.split('?')[0] or 'root'}")
def test_customer_isolation_per_route(case, world, acme_client, acme_member):
    path = API + case.path.format(**world)
    before = globex_state(world)
    response = getattr(acme_client, case.method)(path, case.body, format="json")
    expected = case.status or STATUS[case.kind]
    assert response.status_code == expected, (path, response.content[:400])
    assert globex_state(world) == before, f"{case.method.upper()} {path} changed globex's rows"

    body = response.content.decode()
    if case.kind == LIST and case.method == "get":
        own, other = LISTED[case.name]
        ids = listed_ids(response)
        assert world[other] not in ids
        if "?" not in case.path:
            assert world[own] in ids, "the list should show acme's own rows"
    if case.kind in (LIST, SHARED):
        assert "globex" not in body, body[:400]
    if case.own_path:
        own = acme_client.get(API + case.own_path.format(**world))
        assert own.status_code == 200, (case.own_path, own.content[:400])
    if case.name == "api-token-list" and case.method == "post":
        assert ApiToken.objects.get(pk=response.json()["id"]).user == acme_member
