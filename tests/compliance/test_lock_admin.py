"""The deployment admin checks region preferences against the binding locks and shows the effective lock."""

import pytest
from django.urls import reverse

from compliance.lock_services import create_lock
from placements.models import Deployment
from placements.services import create_deployment
from tests.test_admin_pages import deployment_form

pytestmark = pytest.mark.django_db

ADD = reverse("admin:placements_deployment_add")


def change_url(deployment) -> str:
    return reverse("admin:placements_deployment_change", args=[deployment.pk])


def preferring(*regions) -> dict:
    rows = {"region_preferences-TOTAL_FORMS": len(regions)}
    for index, region in enumerate(regions):
        rows |= {f"region_preferences-{index}-rank": index, f"region_preferences-{index}-region": region.pk}
    return rows


@pytest.fixture
def acme_eu_only(fleet, acme, compliance_officer):
    return create_lock(
        actor=compliance_officer,
        data={"customer": acme, "allowed_jurisdictions": ["eu"], "reason": "Acme contract, EU data only."},
    )


@pytest.fixture
def batch(fleet, acme, acme_member):
    return create_deployment(
        actor=acme_member,
        customer=acme,
        data={"name": "batch", "sku": "H100", "desired_replicas": 2, "max_replicas": 3},
    )


@pytest.fixture
def batch_in_dublin(batch, fleet, compliance_officer):
    return create_lock(
        actor=compliance_officer,
        data={"deployment": batch, "allowed_regions": ["aws/eu-west-1"], "reason": "Batch data stays in Dublin."},
    )


def test_add_rejects_customer_lock_region(superuser_client, acme, fleet, acme_eu_only):
    response = superuser_client.post(ADD, deployment_form(acme, fleet.h100, **preferring(fleet.us_west)))
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Region gcp/us-west4 is forbidden by the customer lock {acme_eu_only.pk}" in page
    assert "Acme contract, EU data only." in page
    assert not Deployment.objects.filter(name="batch").exists()


def test_add_accepts_allowed_region(superuser_client, acme, fleet, acme_eu_only):
    response = superuser_client.post(ADD, deployment_form(acme, fleet.h100, **preferring(fleet.eu_west)))
    assert response.status_code == 302
    assert Deployment.objects.get(name="batch").region_preferences.get().region == fleet.eu_west


def test_add_ignores_other_customers_lock(superuser_client, globex, fleet, acme_eu_only):
    response = superuser_client.post(ADD, deployment_form(globex, fleet.h100, **preferring(fleet.us_west)))
    assert response.status_code == 302
    assert Deployment.objects.get(customer=globex, name="batch").region_preferences.get().region == fleet.us_west


def test_change_rejects_deployment_lock_region(superuser_client, batch, fleet, batch_in_dublin):
    form = deployment_form(batch.customer, fleet.h100, **preferring(fleet.eu_west, fleet.us_east))
    response = superuser_client.post(change_url(batch), form)
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Region aws/us-east-1 is forbidden by the deployment lock {batch_in_dublin.pk}" in page
    assert not batch.region_preferences.exists()

    form = deployment_form(batch.customer, fleet.h100, **preferring(fleet.eu_west))
    accepted = superuser_client.post(change_url(batch), form)
    assert accepted.status_code == 302
    assert list(batch.region_preferences.values_list("region", flat=True)) == [fleet.eu_west.pk]


def test_change_page_shows_effective_lock(superuser_client, batch, acme_eu_only, batch_in_dublin):
    page = superuser_client.get(change_url(batch)).content.decode()
    assert "effective lock" in page.lower()
    assert f"allowed regions: aws/eu-west-1 (from lock {batch_in_dublin.pk})" in page
    assert f"allowed jurisdictions: eu (from lock {acme_eu_only.pk})" in page
    assert "Batch data stays in Dublin." in page


def test_change_page_without_lock(superuser_client, batch):
    page = superuser_client.get(change_url(batch)).content.decode()
    assert "No lock binds this deployment." in page
