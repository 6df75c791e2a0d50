"""The deployment admin's autoscaling policy inline, read-only desired replicas and recent decisions."""

import re

import pytest

from compliance.models import AuditEvent
from placements.models import AutoscalingPolicy, Deployment, ScalingDecision
from tests.test_admin_pages import admin_url, deployment_form

pytestmark = pytest.mark.django_db


def policy_rows(**overrides) -> dict:
    row = {
        "autoscaling-TOTAL_FORMS": 1,
        "autoscaling-0-enabled": "on",
        "autoscaling-0-target_concurrency": 4,
        "autoscaling-0-target_utilization": 0.5,
        "autoscaling-0-window_s": 30,
        "autoscaling-0-scale_down_delay_s": 120,
        "autoscaling-0-max_scale_down_fraction": 0.5,
        "autoscaling-0-seconds_per_request": 1,
    }
    return {**row, **overrides}


def test_admin_creates_policy_through_services(superuser_client, acme, fleet):
    form = deployment_form(acme, fleet.h100, **policy_rows())

    response = superuser_client.post(admin_url(Deployment, "add"), form)

    assert response.status_code == 302
    deployment = Deployment.objects.get(name="batch")
    policy = AutoscalingPolicy.objects.get(deployment=deployment)
    assert (policy.target_concurrency, policy.window_s) == (4.0, 30)
    assert AuditEvent.objects.filter(action="deployment.autoscaling_updated").count() == 1


def test_admin_rejects_policy_out_of_range(superuser_client, acme, fleet):
    form = deployment_form(acme, fleet.h100, **policy_rows(**{"autoscaling-0-target_utilization": 1.5}))

    response = superuser_client.post(admin_url(Deployment, "add"), form)

    assert response.status_code == 200
    assert response.context["inline_admin_formsets"][0].formset.forms[0].errors["target_utilization"] == [
        "1.5 is out of range: use a value greater than 0 and at most 1."
    ]
    assert not Deployment.objects.exists()


def test_admin_rejects_scale_to_zero_with_min_one(superuser_client, acme, fleet):
    form = deployment_form(acme, fleet.h100, min_replicas=1, **policy_rows(**{"autoscaling-0-scale_to_zero": "on"}))

    response = superuser_client.post(admin_url(Deployment, "add"), form)

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert errors["scale_to_zero"][0].startswith("Scale to zero needs min_replicas 0, but min_replicas is 1")
    assert not Deployment.objects.exists()


def test_admin_policy_inputs_carry_the_real_bounds(superuser_client, acme_chat):
    AutoscalingPolicy.objects.create(deployment=acme_chat)

    page = superuser_client.get(admin_url(Deployment, "change", acme_chat.pk)).content.decode()

    window = re.search(r'<input[^>]*name="autoscaling-0-window_s"[^>]*>', page).group(0)
    assert 'min="1"' in window
    assert 'max="86400"' in window
    delay = re.search(r'<input[^>]*name="autoscaling-0-scale_down_delay_s"[^>]*>', page).group(0)
    assert 'min="0"' in delay
    assert 'max="86400"' in delay
    utilization = re.search(r'<input[^>]*name="autoscaling-0-target_utilization"[^>]*>', page).group(0)
    assert 'max="1"' in utilization
    assert 'step="any"' in utilization


def test_admin_rejects_min_zero_without_scale_to_zero(superuser_client, acme, fleet):
    form = deployment_form(acme, fleet.h100, min_replicas=0, **policy_rows())

    response = superuser_client.post(admin_url(Deployment, "add"), form)

    assert response.status_code == 200
    assert "min_replicas 0 needs scale to zero" in response.content.decode()
    assert not Deployment.objects.exists()


def test_admin_desired_read_only_and_decisions_listed(superuser_client, acme_chat):
    AutoscalingPolicy.objects.create(deployment=acme_chat)
    ScalingDecision.objects.create(
        deployment=acme_chat, direction="up", from_replicas=1, to_replicas=3, reason="burst from Paris"
    )

    response = superuser_client.get(admin_url(Deployment, "change", acme_chat.pk))

    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="desired_replicas"' not in page
    assert "burst from Paris" in page
