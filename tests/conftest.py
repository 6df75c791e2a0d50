"""Shared fixtures: named personas and a small fleet.

Personas: ``ops`` (an ops engineer, staff with the ops role), ``compliance_officer`` (staff who may edit locks),
``auditor`` (staff with the read-only auditor role),
and two customers, ``acme`` and ``globex``, each with one member user and a DRF token.
The fleet has 2 providers, 3 regions, 4 clusters and two SKUs, H100 and L4.
"""

from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from fleet.models import Cluster, ClusterCapacity, ClusterState, GpuSku, LocationSource, Provider, Region
from placements.models import Assignment, Customer, DeploymentOutcome, PlacementPlan, PlanStatus, PlanTrigger, Tier
from placements.services import create_deployment


@pytest.fixture(autouse=True, scope="session")
def plain_http():
    """Serve plain HTTP: Django's test client and the live test server do not speak HTTPS.

    Session-scoped and autouse, so it applies before the live server builds its middleware.
    """
    with override_settings(SECURE_SSL_REDIRECT=False):
        yield


# Personas.


@pytest.fixture
def ops(django_user_model):
    user = django_user_model.objects.create_user(username="ops", is_staff=True)
    user.groups.add(Group.objects.get(name="ops"))
    return user


@pytest.fixture
def auditor(django_user_model):
    user = django_user_model.objects.create_user(username="audrey", is_staff=True)
    user.groups.add(Group.objects.get(name="auditor"))
    return user


@pytest.fixture
def broker():
    """The Redis database of the test broker, with the Celery queue keys emptied before and after."""
    import redis

    from mcm_site.celery import app
    from tasks.health import queue_keys

    client = redis.Redis.from_url(app.conf.broker_url)
    keys = queue_keys(app)
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser(username="root", email="root@example.com", password=None)


@pytest.fixture
def superuser_client(client, superuser):
    """A Django test client logged in to the admin as a superuser (no password hashing, so it is fast)."""
    client.force_login(superuser)
    return client


@pytest.fixture
def compliance_officer(django_user_model):
    user = django_user_model.objects.create_user(username="compliance", is_staff=True)
    lock_permissions = Permission.objects.filter(content_type__app_label="compliance")
    user.user_permissions.set(lock_permissions)
    return user


@pytest.fixture
def acme(db):
    return Customer.objects.create(name="acme", display_name="Acme Corp", tier=Tier.PREMIUM)


@pytest.fixture
def globex(db):
    return Customer.objects.create(name="globex", display_name="Globex", tier=Tier.STANDARD)


@pytest.fixture
def acme_member(django_user_model, acme):
    user = django_user_model.objects.create_user(username="alice")
    acme.members.add(user)
    return user


@pytest.fixture
def globex_member(django_user_model, globex):
    user = django_user_model.objects.create_user(username="gary")
    globex.members.add(user)
    return user


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def acme_client(acme_member):
    return token_client(acme_member)


@pytest.fixture
def globex_client(globex_member):
    return token_client(globex_member)


@pytest.fixture
def ops_client(ops):
    return token_client(ops)


@pytest.fixture
def anonymous_client():
    return APIClient()


# The fleet.


@pytest.fixture
def h100(db):
    return GpuSku.objects.create(name="H100", memory_gib=80, aliases=["NVIDIA H100"])


@pytest.fixture
def l4(db):
    return GpuSku.objects.create(name="L4", memory_gib=24)


@pytest.fixture
def fleet(h100, l4):
    """Two providers, three regions, four clusters (one cordoned), with H100 and L4 capacity."""
    aws = Provider.objects.create(name="aws", display_name="Amazon Web Services")
    gcp = Provider.objects.create(name="gcp", display_name="Google Cloud")
    region = dict(location_source=LocationSource.BUILT_IN)
    us_east = Region.objects.create(
        provider=aws,
        code="us-east-1",
        city="Ashburn",
        country_code="US",
        jurisdiction="us",
        latitude=39.0,
        longitude=-77.5,
        **region,
    )
    eu_west = Region.objects.create(
        provider=aws,
        code="eu-west-1",
        city="Dublin",
        country_code="IE",
        jurisdiction="eu",
        latitude=53.3,
        longitude=-6.3,
        **region,
    )
    us_west = Region.objects.create(
        provider=gcp,
        code="us-west4",
        city="Las Vegas",
        country_code="US",
        jurisdiction="us",
        latitude=36.2,
        longitude=-115.1,
        **region,
    )
    clusters = {
        "aws-use1-a": Cluster.objects.create(name="aws-use1-a", region=us_east),
        "aws-use1-b": Cluster.objects.create(name="aws-use1-b", region=us_east, state=ClusterState.CORDONED),
        "aws-euw1-a": Cluster.objects.create(name="aws-euw1-a", region=eu_west),
        "gcp-usw4-a": Cluster.objects.create(name="gcp-usw4-a", region=us_west),
    }
    capacity = [
        ("aws-use1-a", h100, 16, 16, 4, "2.50"),
        ("aws-use1-a", l4, 8, 8, 0, "0.80"),
        ("aws-use1-b", h100, 8, 8, 8, "2.40"),
        ("aws-euw1-a", h100, 16, 12, 0, "2.90"),
        ("gcp-usw4-a", l4, 32, 32, 10, "0.70"),
    ]
    for cluster, sku, total, allocatable, in_use, price in capacity:
        ClusterCapacity.objects.create(
            cluster=clusters[cluster],
            sku=sku,
            total_gpus=total,
            allocatable_gpus=allocatable,
            in_use_gpus=in_use,
            hourly_price_per_gpu=Decimal(price),
        )
    return SimpleNamespace(
        aws=aws, gcp=gcp, us_east=us_east, eu_west=eu_west, us_west=us_west, clusters=clusters, h100=h100, l4=l4
    )


# Deployments, created through the service as customers would.


@pytest.fixture
def acme_chat(fleet, acme, acme_member):
    return create_deployment(
        actor=acme_member,
        customer=acme,
        data={
            "name": "chat",
            "sku": "H100",
            "alternative_skus": ["L4"],
            "gpus_per_replica": 2,
            "min_replicas": 1,
            "desired_replicas": 3,
            "max_replicas": 6,
            "min_providers": 1,
            "min_regions": 1,
            "region_preference": ["aws/us-east-1", "gcp/us-west4"],
            "demand_origins": [
                {"name": "New York", "country_code": "US", "latitude": 40.7, "longitude": -74.0, "share": 0.6},
                {"name": "London", "country_code": "GB", "latitude": 51.5, "longitude": -0.1, "share": 0.4},
            ],
        },
    )


@pytest.fixture
def globex_search(fleet, globex, globex_member):
    return create_deployment(
        actor=globex_member,
        customer=globex,
        data={
            "name": "search",
            "sku": "L4",
            "gpus_per_replica": 1,
            "min_replicas": 1,
            "desired_replicas": 2,
            "max_replicas": 4,
            "min_providers": 1,
            "min_regions": 1,
        },
    )


@pytest.fixture
def applied_plan(fleet, acme_chat, globex_search):
    """An applied plan that runs acme/chat on two clusters and leaves one globex/search replica unmet."""
    plan = PlacementPlan.objects.create(
        version=1,
        trigger=PlanTrigger.MANUAL,
        status=PlanStatus.APPLIED,
        inputs_digest="0" * 64,
        objective=12.5,
        gap=0.0,
        solver="highs",
        solver_status="Optimal",
        solve_seconds=0.2,
    )
    Assignment.objects.create(
        plan=plan, deployment=acme_chat, cluster=fleet.clusters["aws-use1-a"], sku=fleet.h100, replicas=2
    )
    Assignment.objects.create(
        plan=plan, deployment=acme_chat, cluster=fleet.clusters["aws-euw1-a"], sku=fleet.h100, replicas=1
    )
    Assignment.objects.create(
        plan=plan, deployment=globex_search, cluster=fleet.clusters["gcp-usw4-a"], sku=fleet.l4, replicas=1
    )
    DeploymentOutcome.objects.create(
        plan=plan,
        deployment=acme_chat,
        placed_replicas=3,
        unmet_replicas=0,
        explanation={"chosen": {"aws-use1-a": "preferred region"}, "rejected": {"gcp-usw4-a": "wrong SKU"}},
    )
    DeploymentOutcome.objects.create(
        plan=plan, deployment=globex_search, placed_replicas=1, unmet_replicas=1, explanation={"unmet": "full"}
    )
    return plan
