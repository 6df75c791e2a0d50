"""Property: over random fleets, locks and outages, no plan and no execution places a replica outside its locks.

``inside`` decides whether a cluster is inside a deployment's locks. It is written from the lock
rules, independently of ``placements.scheduler.locks``, which the scheduler and the lock guard of
the executor both use. Every non-empty part of a lock restricts, and all locks that bind a
deployment apply together.
"""

from dataclasses import replace

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.models import PlacementLock
from fleet.kube import DesiredDeployment
from fleet.models import Cluster, ClusterState
from placements.execution import ClusterWrite, rejected_writes
from placements.lock_guard import placement_violation, rejected_placements
from placements.scheduler import solve
from placements.scheduler.problem import (
    ClusterInput,
    DeploymentInput,
    LockInput,
    ProblemInput,
    SchedulerOptions,
)

PROVIDERS = ["aws", "gcp", "azure"]
REGIONS = [("eu-west", "EU", 53.3, -6.3), ("eu-central", "EU", 50.1, 8.7), ("us-east", "US", 39.0, -77.5)]
REGIONS += [("ap-northeast", "JP", 35.7, 139.7)]
REGION_KEYS = [f"{provider}/{code}" for provider in PROVIDERS for code, *_rest in REGIONS]
SKUS = ["H100", "L4"]
CAPABILITIES = ["soc2", "static-egress"]
OPTIONS = SchedulerOptions(time_limit_s=30, gap_target=1e-6, max_candidates=0)


def inside(cluster: ClusterInput, locks) -> bool:
    """Return whether ``cluster`` passes every lock: the oracle of these tests."""
    for lock in locks:
        if lock.allowed_regions and cluster.region not in lock.allowed_regions:
            return False
        if lock.allowed_jurisdictions and cluster.jurisdiction not in lock.allowed_jurisdictions:
            return False
        if lock.allowed_providers and cluster.provider not in lock.allowed_providers:
            return False
        if cluster.provider in lock.excluded_providers:
            return False
        if any(capability not in cluster.capabilities for capability in lock.required_capabilities):
            return False
    return True


def some(values, min_size=0):
    return st.lists(st.sampled_from(values), min_size=min_size, max_size=2, unique=True).map(frozenset)


@st.composite
def lock_inputs(draw, source):
    return LockInput(
        source=source,
        reason="policy",
        allowed_regions=draw(some(REGION_KEYS)) or None,
        allowed_jurisdictions=draw(some(["EU", "US", "JP"])) or None,
        allowed_providers=draw(some(PROVIDERS)) or None,
        excluded_providers=draw(some(PROVIDERS)) if draw(st.integers(0, 3)) == 0 else frozenset(),
        required_capabilities=draw(some(CAPABILITIES)) if draw(st.integers(0, 2)) == 0 else frozenset(),
    )


@st.composite
def fleets(draw):
    clusters = []
    for index in range(draw(st.integers(3, 9))):
        provider = draw(st.sampled_from(PROVIDERS))
        region, jurisdiction, latitude, longitude = draw(st.sampled_from(REGIONS))
        # A cluster under an outage or down is not schedulable. Some keep their current replicas (holds_current).
        lost = draw(st.integers(0, 3)) == 0
        clusters.append(
            ClusterInput(
                id=index + 1,
                name=f"c{index + 1}",
                provider=provider,
                region=f"{provider}/{region}",
                jurisdiction=jurisdiction,
                latitude=latitude,
                longitude=longitude,
                capabilities=draw(some(CAPABILITIES)),
                free_gpus={sku: draw(st.sampled_from([0, 8, 16, 32])) for sku in SKUS},
                price_per_gpu_hour={sku: draw(st.floats(0.5, 6.0)) for sku in SKUS},
                schedulable=not lost,
                holds_current=lost and draw(st.booleans()),
                state="down" if lost else "active",
            )
        )
    return clusters


@st.composite
def problems(draw):
    fleet = draw(fleets())
    ids = [cluster.id for cluster in fleet]
    # Locks at three levels: platform (shared by all), customer (shared by its deployments), deployment.
    platform = tuple(draw(st.lists(lock_inputs("platform"), max_size=1)))
    customers = [tuple(draw(st.lists(lock_inputs(f"customer {n}"), max_size=1))) for n in range(3)]
    deployments, current = [], {}
    for index in range(draw(st.integers(1, 10))):
        own = tuple(draw(st.lists(lock_inputs(f"deployment {index + 1}"), max_size=2)))
        replicas = draw(st.integers(1, 4))
        deployment = DeploymentInput(
            id=index + 1,
            name=f"d{index + 1}",
            tier="standard",
            tier_rank=draw(st.integers(0, 2)),
            skus=tuple(draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=2, unique=True))),
            gpus_per_replica=draw(st.sampled_from([1, 2, 4])),
            replicas=replicas,
            min_providers=draw(st.sampled_from([1, 1, 2])),
            min_regions=draw(st.sampled_from([1, 1, 2])),
            region_preference=tuple(draw(st.lists(st.sampled_from(REGION_KEYS), max_size=2, unique=True))),
            locks=platform + draw(st.sampled_from(customers)) + own,
            spread=draw(st.sampled_from(["full", "capped", "off"])),
            # Held lost clusters and excluded clusters, as failover and dry runs set them.
            hold_clusters=draw(some(ids)),
            excluded_clusters=draw(some(ids)),
        )
        deployments.append(deployment)
        # Replicas running now, also where a lock added since forbids them.
        for cluster_id in draw(st.lists(st.sampled_from(ids), max_size=2, unique=True)):
            current[deployment.id, cluster_id, draw(st.sampled_from(deployment.skus))] = draw(st.integers(1, replicas))
    return ProblemInput(clusters=fleet, deployments=deployments, current=current)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_plans_and_guard_respect_locks(problem):
    clusters = {cluster.id: cluster for cluster in problem.clusters}
    deployments = {deployment.id: deployment for deployment in problem.deployments}

    result = solve(problem, OPTIONS)

    for (deployment_id, cluster_id, _sku), replicas in result.assignments.items():
        deployment, cluster = deployments[deployment_id], clusters[cluster_id]
        assert inside(cluster, deployment.locks), f"plan puts {deployment.name} on {cluster.name} outside its locks"
        assert placement_violation(deployment.locks, cluster, replicas) is None
    # For any assignment forced into a plan, the guard rejects exactly those outside the locks, and never a removal.
    for deployment in problem.deployments:
        for cluster in problem.clusters:
            violation = placement_violation(deployment.locks, cluster, 1)
            assert (violation is None) == inside(cluster, deployment.locks)
            if violation is not None:
                assert violation.split("(")[0].endswith(f"{source_of(deployment.locks, cluster)} ")
            assert placement_violation(deployment.locks, cluster, 0) is None


def source_of(locks, cluster: ClusterInput) -> str:
    """Return the source of the first lock that the oracle finds broken."""
    return next(lock.source for lock in locks if not inside(cluster, [lock]))


# The same property on stored locks, through the lock guard of the executor as it runs before a write.


class Rollback(Exception):
    """Signal that rolls back the rows of one example."""


@st.composite
def stored_lock_specs(draw):
    """Return one tuple per lock: level, jurisdictions, region indexes, providers, excluded providers, capabilities."""
    spec = st.tuples(
        st.sampled_from(["customer", "deployment"]),
        st.lists(st.sampled_from(["eu", "us"]), max_size=2, unique=True),
        st.lists(st.integers(0, 2), max_size=2, unique=True),
        st.lists(st.sampled_from(["aws", "gcp"]), max_size=1, unique=True),
        st.lists(st.sampled_from(["aws", "gcp"]), max_size=1, unique=True),
        st.lists(st.sampled_from(CAPABILITIES), max_size=1, unique=True),
    )
    return draw(st.lists(spec, min_size=1, max_size=3))


@pytest.mark.django_db
def test_guard_on_stored_locks(fleet, acme, acme_chat):
    regions = [fleet.us_east, fleet.eu_west, fleet.us_west]
    providers = {"aws": fleet.aws, "gcp": fleet.gcp}

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        specs=stored_lock_specs(),
        capabilities=st.lists(some(CAPABILITIES), min_size=4, max_size=4),
        states=st.lists(st.sampled_from(ClusterState.values), min_size=4, max_size=4),
    )
    def check(specs, capabilities, states):
        try:
            with transaction.atomic():
                run_example(specs, capabilities, states)
                raise Rollback
        except Rollback:
            pass

    def run_example(specs, capabilities, states):
        clusters = list(Cluster.objects.select_related("region__provider").order_by("name"))
        for cluster, capability_set, state in zip(clusters, capabilities, states, strict=True):
            cluster.capabilities, cluster.state = sorted(capability_set), state
            cluster.save(update_fields=["capabilities", "state"])
        oracle_locks = []
        for level, jurisdictions, region_indexes, allowed, excluded, required in specs:
            subject = {"customer": acme} if level == "customer" else {"deployment": acme_chat}
            lock = PlacementLock.objects.create(
                allowed_jurisdictions=jurisdictions, required_capabilities=required, reason="policy", **subject
            )
            lock.allowed_regions.set([regions[index] for index in region_indexes])
            lock.allowed_providers.set([providers[name] for name in allowed])
            lock.excluded_providers.set([providers[name] for name in excluded])
            oracle_locks.append(
                LockInput(
                    source=f"lock {lock.pk}",
                    reason="policy",
                    allowed_regions=frozenset(f"{regions[i].provider.name}/{regions[i].code}" for i in region_indexes),
                    allowed_jurisdictions=frozenset(jurisdictions),
                    allowed_providers=frozenset(allowed),
                    excluded_providers=frozenset(excluded),
                    required_capabilities=frozenset(required),
                )
            )

        rejected = rejected_placements([(acme_chat.pk, cluster, 2) for cluster in clusters])
        writes = [
            (cluster, ClusterWrite("acme-chat", DesiredDeployment("acme-chat", acme_chat.pk, 2, 2, "H100")))
            for cluster in clusters
        ]
        rejected_at_write = rejected_writes(writes)
        for index, cluster in enumerate(clusters):
            place = ClusterInput(
                id=cluster.pk,
                name=cluster.name,
                provider=cluster.region.provider.name,
                region=f"{cluster.region.provider.name}/{cluster.region.code}",
                jurisdiction=cluster.region.jurisdiction,
                latitude=0.0,
                longitude=0.0,
                capabilities=frozenset(cluster.capabilities),
            )
            outside = not inside(place, oracle_locks)
            assert ((acme_chat.pk, cluster.pk) in rejected) == outside, (cluster.name, specs)
            assert (index in rejected_at_write) == outside, (cluster.name, specs)
            if outside:
                assert not rejected_at_write[index].retryable
        # A delete is never rejected.
        assert rejected_writes([(cluster, ClusterWrite("acme-chat", None)) for cluster in clusters]) == {}

    check()


def test_oracle_hand_checked_case():
    """The oracle itself can fail: an EU-only lock rules out a US cluster and keeps an EU one."""
    eu = ClusterInput(1, "eu", "aws", "aws/eu-west", "EU", 53.3, -6.3, capabilities=frozenset({"soc2"}))
    us = replace(eu, id=2, name="us", region="aws/us-east", jurisdiction="US")
    lock = LockInput("customer bank", "GDPR", allowed_jurisdictions=frozenset({"EU"}))
    assert inside(eu, [lock])
    assert not inside(us, [lock])
    assert not inside(eu, [replace(lock, required_capabilities=frozenset({"static-egress"}))])
