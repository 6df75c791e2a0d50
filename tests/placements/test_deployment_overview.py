"""The admin's overview page of a deployment: replicas and users on a map, routes, lock, explanation and history."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from compliance.lock_services import create_lock, delete_lock
from fleet.models import TelemetrySnapshot
from placements.models import PlanTrigger, ScalingDecision, ScalingDirection
from placements.planning import run_plan
from placements.scheduler.problem import SchedulerOptions

pytestmark = pytest.mark.django_db

FAST = SchedulerOptions(time_limit_s=10, gap_target=0.0)


def overview_url(deployment) -> str:
    return reverse("admin:placements_deployment_overview", args=[deployment.pk])


@pytest.fixture(autouse=True)
def routes_from_database(settings):
    """Compute routes from the database, so that no route table left in Redis by another test is read."""
    settings.MCM_ROUTES_REDIS_URL = None


@pytest.fixture
def compliance_role(django_user_model):
    user = django_user_model.objects.create_user(username="compliance-role", is_staff=True)
    user.groups.add(Group.objects.get(name="compliance"))
    return user


@pytest.fixture
def planned(fleet, acme_chat, globex_search, compliance_officer):
    """acme/chat kept off gcp by a customer lock, planned for real, its replicas ready, and scaled once."""
    create_lock(
        actor=compliance_officer,
        data={"customer": acme_chat.customer, "excluded_providers": [fleet.gcp], "reason": "No Google Cloud (4.2)"},
        reason="contract signed",
    )
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)
    for assignment in plan.assignments.filter(deployment=acme_chat):
        TelemetrySnapshot.objects.create(
            cluster=assignment.cluster,
            source="pull",
            ok=True,
            deployments={
                str(acme_chat.pk): {"name": "chat", "replicas": assignment.replicas, "ready": assignment.replicas}
            },
        )
    ScalingDecision.objects.create(
        deployment=acme_chat,
        decided_at=timezone.now() - timedelta(minutes=5),
        direction=ScalingDirection.UP,
        from_replicas=2,
        to_replicas=3,
        reason="in-flight requests above target for 60 s",
        plan=plan,
    )
    return plan


def section(html: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"', html)
    assert match, f"no element with id {element_id!r} in the page"
    tag = match.group(1)
    if tag == "div":
        end = html.find('<div class="module', match.end())
        return html[match.start() : end if end > 0 else len(html)]
    return html[match.start() : html.find(f"</{tag}>", match.start())]


# Access.


@pytest.mark.parametrize("persona", ["superuser", "ops", "auditor", "compliance_role"])
def test_overview_renders_for_staff_roles(client, request, planned, acme_chat, persona):
    client.force_login(request.getfixturevalue(persona))

    response = client.get(overview_url(acme_chat))

    assert response.status_code == 200
    for element_id in ("deployment-map", "deployment-origins", "deployment-routes", "deployment-lock"):
        assert f'id="{element_id}"' in response.content.decode()
    for element_id in ("deployment-explanation", "deployment-scaling", "deployment-audit"):
        assert f'id="{element_id}"' in response.content.decode()


def test_overview_redirects_anonymous_to_login(client, acme_chat):
    response = client.get(overview_url(acme_chat))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_overview_forbidden_without_view_permission(client, django_user_model, acme_chat):
    client.force_login(django_user_model.objects.create_user(username="newcomer", is_staff=True))

    assert client.get(overview_url(acme_chat)).status_code == 403


def test_overview_redirects_customer_member_to_login(client, acme_member, acme_chat):
    client.force_login(acme_member)

    response = client.get(overview_url(acme_chat))

    assert response.status_code == 302


def test_overview_of_unknown_deployment_is_404(superuser_client, fleet):
    assert superuser_client.get(reverse("admin:placements_deployment_overview", args=[999999])).status_code == 404


# Links.


def test_change_page_links_to_overview(superuser_client, acme_chat):
    response = superuser_client.get(reverse("admin:placements_deployment_change", args=[acme_chat.pk]))

    assert overview_url(acme_chat) in response.content.decode()


# Sections.


def test_map_shows_replicas_by_region_and_origins(superuser_client, planned, acme_chat):
    html = superuser_client.get(overview_url(acme_chat)).content.decode()
    svg = section(html, "deployment-map")

    replicas = dict(re.findall(r'<circle class="region"[^>]*data-region="([^"]+)"[^>]*data-replicas="(\d+)"', svg))
    expected = {}
    for assignment in planned.assignments.filter(deployment=acme_chat).select_related("cluster__region__provider"):
        region = assignment.cluster.region
        key = f"{region.provider.name}/{region.code}"
        expected[key] = str(int(expected.get(key, 0)) + assignment.replicas)
    assert replicas == expected
    assert not any(key.startswith("gcp/") for key in replicas)  # the customer's lock excludes gcp
    assert re.findall(r'<rect class="origin"[^>]*data-origin="([^"]+)"', svg) == ["New York", "London"]
    assert 'href="#mcm-land"' in svg


def test_origins_table_names_nearest_replicas(superuser_client, planned, acme_chat):
    table = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-origins")

    assert re.findall(r'<tr data-origin="([^"]+)"', table) == ["New York", "London"]
    assert "60%" in table
    assert "40%" in table
    assert "aws/" in table


def test_routes_default_to_largest_origin(superuser_client, planned, acme_chat):
    routes = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-routes")

    assert "Routes for New York" in routes
    routed = re.findall(r'<tr data-cluster="([^"]+)"', routes)
    assert routed
    assert set(routed) <= {"aws-use1-a", "aws-use1-b", "aws-euw1-a"}


def test_routes_follow_chosen_city(superuser_client, planned, acme_chat):
    html = superuser_client.get(overview_url(acme_chat), {"city": "51.5,-0.1|London"}).content.decode()

    assert "Routes for London" in section(html, "deployment-routes")
    lines = re.findall(r'<line class="route"[^>]*data-cluster="([^"]+)"', section(html, "deployment-map"))
    assert lines


def test_routes_reject_unknown_choice(superuser_client, planned, acme_chat):
    routes = section(
        superuser_client.get(overview_url(acme_chat), {"city": "0,0|Nowhere"}).content.decode(), "deployment-routes"
    )

    assert "errorlist" in routes
    assert "Routes for" not in routes


def test_lock_section_shows_effective_lock(superuser_client, planned, acme_chat):
    lock = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-lock")

    assert "excluded providers: gcp" in lock
    assert "No Google Cloud (4.2)" in lock


def test_explanation_section_words_the_plan(superuser_client, planned, acme_chat):
    explanation = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-explanation")

    assert "3 of 3 replicas placed" in explanation
    assert "your users in New York and London" in explanation
    assert 'data-reason="locked_out"' in explanation


def test_scaling_section_lists_decisions(superuser_client, planned, acme_chat):
    scaling = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-scaling")

    assert 'data-direction="up"' in scaling
    assert "in-flight requests above target for 60 s" in scaling
    assert f"v{planned.version}" in scaling


def test_audit_lists_deployment_and_lock_events(superuser_client, planned, acme_chat, globex_search):
    audit = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-audit")

    actions = re.findall(r'data-action="([^"]+)"', audit)
    assert "deployment.created" in actions
    assert "lock.created" in actions
    assert "contract signed" in audit


def test_audit_section_keeps_deleted_lock_history(superuser_client, planned, acme_chat, compliance_officer):
    lock = acme_chat.customer.locks.get()
    delete_lock(actor=compliance_officer, lock=lock, reason="contract ended")

    audit = section(superuser_client.get(overview_url(acme_chat)).content.decode(), "deployment-audit")

    assert "lock.deleted" in re.findall(r'data-action="([^"]+)"', audit)
    assert "contract ended" in audit


def test_audit_omits_other_customers_locks(superuser_client, planned, globex_search, acme_chat):
    audit = section(superuser_client.get(overview_url(globex_search)).content.decode(), "deployment-audit")

    assert "lock.created" not in re.findall(r'data-action="([^"]+)"', audit)


def test_overview_without_plan_says_so(superuser_client, acme_chat):
    html = superuser_client.get(overview_url(acme_chat)).content.decode()

    assert "No plan has been applied yet." in html
    assert "No plan has placed this deployment yet" in section(html, "deployment-explanation")
    assert "The autoscaler has not changed this deployment." in section(html, "deployment-scaling")


def test_overview_of_unplaced_deployment(superuser_client, applied_plan, acme_chat):
    applied_plan.assignments.filter(deployment=acme_chat).delete()

    html = superuser_client.get(overview_url(acme_chat)).content.decode()

    assert f"Plan v{applied_plan.version} places no replica of this deployment." in html
    assert '<circle class="region"' not in section(html, "deployment-map")
