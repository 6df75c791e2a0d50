"""An auditor reads every main page of the console and can change nothing, neither through the pages nor by POST."""

import pytest
from playwright.sync_api import expect

from compliance.models import PlacementLock
from fleet.models import ClusterState
from placements.models import FailoverKind, FailoverRequest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Actions that only read, so an auditor may see them.
READ_ONLY_ACTIONS = {"export_csv"}


@pytest.fixture
def rows(fleet, applied_plan, acme, acme_chat):
    """One row of each main model, keyed by the admin URL prefix of its model."""
    lock = PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu"], reason="Contract clause 7.")
    failover = FailoverRequest.objects.create(
        deployment=acme_chat, kind=FailoverKind.FAILOVER, replicas=1, reason="aws-use1-a is down"
    )
    failover.clusters.set([fleet.clusters["aws-use1-a"]])
    return {
        "fleet/provider": fleet.aws,
        "fleet/region": fleet.us_east,
        "fleet/cluster": fleet.clusters["aws-use1-a"],
        "placements/customer": acme,
        "placements/deployment": acme_chat,
        "placements/failoverrequest": failover,
        "placements/placementplan": applied_plan,
        "compliance/placementlock": lock,
    }


def csrf_token(page) -> str:
    """Return the CSRF cookie's secret, which Django accepts as the form's csrfmiddlewaretoken."""
    cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
    return cookies["csrftoken"]


def test_auditor_pages_offer_no_changes(login, auditor, rows):
    page = login(auditor)

    for model, row in rows.items():
        page.goto(f"/admin/{model}/")
        expect(page.locator("#result_list")).to_be_visible()
        assert page.locator("a.addlink").count() == 0, f"{model} list offers an add button"
        actions = set(page.locator('select[name="action"] option').evaluate_all("options => options.map(o => o.value)"))
        assert actions - READ_ONLY_ACTIONS - {""} == set(), f"{model} list offers the actions {actions}"

        page.goto(f"/admin/{model}/{row.pk}/change/")
        expect(page.locator("#content-main")).to_be_visible()
        for control in ('input[name="_save"]', 'input[name="_continue"]', 'input[name="_addanother"]', "a.deletelink"):
            assert page.locator(control).count() == 0, f"{model} {row.pk} page shows {control}"
        editable = page.locator("#content-main form textarea, #content-main form select")
        assert editable.count() == 0, f"{model} {row.pk} page has editable fields"


def test_auditor_post_to_change_page_fails(login, auditor, rows):
    page = login(auditor)
    page.goto("/admin/")
    token = csrf_token(page)
    lock = rows["compliance/placementlock"]
    cluster = rows["fleet/cluster"]
    deployment = rows["placements/deployment"]

    edit = page.request.post(
        f"/admin/compliance/placementlock/{lock.pk}/change/",
        form={"csrfmiddlewaretoken": token, "reason": "Edited.", "change_reason": "Audit test."},
    )
    delete = page.request.post(
        f"/admin/placements/deployment/{deployment.pk}/delete/", form={"csrfmiddlewaretoken": token, "post": "yes"}
    )
    cordon = page.request.post(
        "/admin/fleet/cluster/",
        form={
            "csrfmiddlewaretoken": token,
            "action": "cordon_clusters",
            "_selected_action": str(cluster.pk),
            "confirm": "yes",
            "reason": "Audit test.",
        },
    )

    assert edit.status == 403
    assert "CSRF" not in edit.text(), "the POST failed its CSRF check, not the permission check"
    assert delete.status == 403
    assert cordon.status in (200, 302)
    lock.refresh_from_db()
    assert lock.reason == "Contract clause 7."
    assert type(deployment).objects.filter(pk=deployment.pk).exists()
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
