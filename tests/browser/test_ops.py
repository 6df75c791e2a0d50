"""The console for an ops engineer: the dashboard, a failover approval, and a drain with its preview."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from fleet.models import ClusterHealth, ClusterState
from placements.models import FailoverKind, FailoverRequest, FailoverStatus

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# The dashboard fetches fresh data every 15 s; the fake clock runs a little past that.
REFRESH_MS = 16_000


def take_down(cluster, reason: str = "no heartbeat for 60 s") -> None:
    cluster.health = ClusterHealth.DOWN
    cluster.health_reason = reason
    cluster.health_changed_at = timezone.now()
    cluster.save(update_fields=["health", "health_reason", "health_changed_at"])


def pending_failover(deployment, cluster) -> FailoverRequest:
    request = FailoverRequest.objects.create(
        deployment=deployment,
        kind=FailoverKind.FAILOVER,
        replicas=2,
        reason=f"{cluster.name} is down",
        deadline=timezone.now() + timedelta(minutes=10),
    )
    request.clusters.set([cluster])
    return request


def test_dashboard_map_and_trouble(login, ops, fleet, applied_plan):
    take_down(fleet.clusters["gcp-usw4-a"])

    page = login(ops)

    regions = page.locator("svg#world-map circle.region")
    expect(regions).to_have_count(3)
    us_west = page.locator('svg#world-map circle.region[data-region="gcp/us-west4"]')
    us_east = page.locator('svg#world-map circle.region[data-region="aws/us-east-1"]')
    eu_west = page.locator('svg#world-map circle.region[data-region="aws/eu-west-1"]')
    expect(us_west).to_have_attribute("data-health", "down")
    expect(us_east).to_have_attribute("data-health", "healthy")
    # aws/us-east-1 has 32 GPUs in two clusters, aws/eu-west-1 16 in one.
    assert float(us_east.get_attribute("r")) > float(eu_west.get_attribute("r"))
    assert page.locator("svg#world-map .replicas, svg#world-map text").count() >= 1

    down_row = page.locator('#trouble-clusters [data-cluster="gcp-usw4-a"]')
    expect(down_row).to_be_visible()
    expect(down_row).to_contain_text("down")
    expect(page.locator('#trouble-clusters [data-cluster="aws-euw1-a"]')).to_have_count(0)


def test_dashboard_tables(login, ops, fleet, applied_plan, acme_chat, globex_search):
    failover = pending_failover(acme_chat, fleet.clusters["aws-use1-a"])

    page = login(ops)

    by_sku = page.locator("#capacity-by-sku")
    expect(by_sku).to_contain_text("H100")
    expect(by_sku).to_contain_text("L4")
    by_provider = page.locator("#capacity-by-provider")
    expect(by_provider).to_contain_text("aws")
    expect(by_provider).to_contain_text("gcp")
    # The applied plan leaves one of globex/search's two replicas unmet.
    short = page.locator("#short-deployments")
    expect(short).to_contain_text("search")
    expect(short.locator(f'a[href*="/admin/placements/deployment/{globex_search.pk}/overview/"]')).to_have_count(1)
    failover_link = page.locator(f'#pending-failovers a[href*="/admin/placements/failoverrequest/{failover.pk}/"]')
    expect(failover_link).to_have_count(1)
    expect(page.locator("#latest-decisions")).to_be_visible()
    expect(page.locator("#background-health")).to_be_visible()


def test_dashboard_refreshes_itself(login, page, ops, fleet, applied_plan):
    page.clock.install()
    login(ops)
    expect(page.locator("#trouble-clusters")).to_be_visible()
    expect(page.locator('#trouble-clusters [data-cluster="aws-euw1-a"]')).to_have_count(0)

    take_down(fleet.clusters["aws-euw1-a"])
    page.clock.run_for(REFRESH_MS)

    expect(page.locator('#trouble-clusters [data-cluster="aws-euw1-a"]')).to_be_visible()


def test_ops_approves_pending_failover(login, ops, fleet, acme_chat, replans):
    failover = pending_failover(acme_chat, fleet.clusters["aws-use1-a"])
    page = login(ops)

    page.goto("/admin/placements/failoverrequest/")
    page.check(f'input[name="_selected_action"][value="{failover.pk}"]')
    page.select_option('select[name="action"]', "approve_requests")
    page.click('button[name="index"]')
    page.fill('textarea[name="reason"]', "The customer agreed to the move.")
    page.click('input[type="submit"][value="Approve failover requests"]')

    expect(page.locator("ul.messagelist")).to_contain_text("Approved: 1 of 1.")
    failover.refresh_from_db()
    assert failover.status == FailoverStatus.APPROVED
    assert failover.decided_by == ops
    assert failover.decision_reason == "The customer agreed to the move."
    assert replans, "approving a failover requested no re-plan"


def test_ops_previews_and_applies_drain(login, ops, fleet, applied_plan, replans):
    cluster = fleet.clusters["aws-use1-a"]
    page = login(ops)

    page.goto("/admin/fleet/cluster/")
    page.check(f'input[name="_selected_action"][value="{cluster.pk}"]')
    page.select_option('select[name="action"]', "drain_clusters")
    page.click('button[name="index"]')

    for table in ("#preview-totals", "#preview-by-provider", "#preview-by-region", "#preview-unmet-by-tier"):
        expect(page.locator(table)).to_be_visible()
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE, "the preview drained the cluster before the confirmation"

    reason = page.locator('[name="reason"]')
    if reason.count():
        reason.fill("Hardware maintenance in the data centre.")
    page.click('input[type="submit"][name="confirm"]')

    expect(page.locator("ul.messagelist")).to_be_visible()
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.DRAINING
    assert replans, "draining requested no re-plan"
