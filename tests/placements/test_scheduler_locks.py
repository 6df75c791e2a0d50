"""Lock rules, distance and RTT estimates of the scheduler."""

import pytest

from placements.scheduler.geo import estimate_rtt_ms, haversine_km
from placements.scheduler.locks import lock_violation
from placements.scheduler.problem import LockInput
from tests.placements.scheduler_factories import cluster

FRANKFURT = cluster(1, provider="gcp", region="europe-west3", jurisdiction="EU", capabilities=frozenset({"soc2"}))


def test_lock_without_rules_allows_any_cluster():
    assert lock_violation(LockInput("customer acme", "none"), FRANKFURT) is None


def test_lock_allowing_cluster_returns_none():
    lock = LockInput(
        "customer acme",
        "GDPR",
        allowed_regions=frozenset({"gcp/europe-west3"}),
        allowed_jurisdictions=frozenset({"EU"}),
        allowed_providers=frozenset({"gcp"}),
        excluded_providers=frozenset({"aws"}),
        required_capabilities=frozenset({"soc2"}),
    )
    assert lock_violation(lock, FRANKFURT) is None


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"allowed_regions": frozenset({"aws/us-east-1"})}, "region gcp/europe-west3 is not allowed"),
        ({"allowed_jurisdictions": frozenset({"US"})}, "jurisdiction EU is not allowed"),
        ({"allowed_providers": frozenset({"aws", "azure"})}, "provider gcp is not allowed"),
        ({"excluded_providers": frozenset({"gcp"})}, "provider gcp is excluded"),
        ({"required_capabilities": frozenset({"static-egress"})}, "capability static-egress is missing"),
    ],
)
def test_lock_violation_names_rule_and_source(rule, expected):
    reason = lock_violation(LockInput("customer acme", "data residency", **rule), FRANKFURT)
    assert reason is not None
    assert reason.startswith(expected)
    assert "customer acme" in reason
    assert "data residency" in reason


def test_lock_empty_allowed_set_does_not_restrict():
    lock = LockInput("customer acme", "none", allowed_regions=frozenset(), allowed_providers=frozenset())
    assert lock_violation(lock, FRANKFURT) is None


def test_haversine_london_paris_distance():
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=1.0)


def test_haversine_same_point_is_zero():
    assert haversine_km(10.0, 20.0, 10.0, 20.0) == 0.0


def test_rtt_estimate_grows_with_distance():
    assert estimate_rtt_ms(0.0) == pytest.approx(5.0)
    assert estimate_rtt_ms(1000.0) == pytest.approx(20.0)
