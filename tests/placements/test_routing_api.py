"""GET /api/v1/deployments/{id}/route/ and GET /api/v1/ping."""

from pathlib import Path

import pytest
from django.conf import settings

from fleet.models import Cluster, ClusterHealth, TelemetrySnapshot
from placements import routing
from placements.models import Deployment
from tests.placements.execution_factories import apply_plan

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_table():
    routing.TABLE.skip_until = 0.0
    routing.TABLE.stale = False
    yield
    routing.TABLE.skip_until = 0.0


@pytest.fixture
def chat_running(fleet, acme_chat):
    apply_plan([(acme_chat, fleet.clusters["aws-use1-a"], 2), (acme_chat, fleet.clusters["aws-euw1-a"], 1)])
    for name, ready in (("aws-use1-a", 2), ("aws-euw1-a", 1)):
        TelemetrySnapshot.objects.create(
            cluster=fleet.clusters[name],
            source="pull",
            ok=True,
            deployments={str(acme_chat.pk): {"name": "chat", "replicas": ready, "ready": ready}},
        )
    routing.refresh_routes([acme_chat.pk], reason="test")
    return acme_chat


def url(deployment, slash: bool = True) -> str:
    return f"/api/v1/deployments/{deployment.pk}/route" + ("/" if slash else "")


def test_route_for_coordinates(acme_client, chat_running):
    response = acme_client.get(url(chat_running), {"latitude": "51.5", "longitude": "-0.1"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["deployment"] == chat_running.pk
    assert body["source"] == "cache"
    assert body["client"]["source"] == "coordinates"
    assert [route["cluster"] for route in body["routes"]] == ["aws-euw1-a", "aws-use1-a"]
    assert set(body["routes"][0]) >= {
        "cluster",
        "provider",
        "region",
        "latitude",
        "longitude",
        "distance_km",
        "rtt_ms",
        "ready_replicas",
        "spare_requests_per_second",
        "weight",
        "health",
    }


def test_route_without_trailing_slash(acme_client, chat_running):
    response = acme_client.get(url(chat_running, slash=False), {"region": "aws/us-east-1"})

    assert response.status_code == 200, response.content
    assert response.json()["client"]["source"] == "region aws/us-east-1"
    assert response.json()["routes"][0]["cluster"] == "aws-use1-a"


def test_route_for_country_from_places_file(acme_client, chat_running):
    if not (Path(settings.MCM_DATA_DIR) / routing.PLACES_FILE).is_file():
        pytest.skip(f"Natural Earth places file not found under MCM_DATA_DIR={settings.MCM_DATA_DIR}")

    response = acme_client.get(url(chat_running), {"country": "DE"})

    assert response.status_code == 200, response.content
    assert response.json()["client"]["source"] == "country DE: Berlin"
    assert response.json()["routes"][0]["cluster"] == "aws-euw1-a"


def test_route_when_redis_is_down(settings, acme_client, chat_running):
    settings.MCM_ROUTES_REDIS_URL = "redis://127.0.0.1:1/0"

    response = acme_client.get(url(chat_running), {"latitude": "40.7", "longitude": "-74"})

    assert response.status_code == 200, response.content
    assert response.json()["source"] == "database"
    assert response.json()["routes"][0]["cluster"] == "aws-use1-a"


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({}, "location", "missing"),
        ({"latitude": "95", "longitude": "10"}, "latitude", "'95' is out of range"),
        ({"latitude": "10", "longitude": "east"}, "longitude", "'east' is not a number"),
        ({"country": "XQ"}, "country", "'XQ' is unknown"),
        ({"region": "aws/atlantis-1"}, "region", "No region 'aws/atlantis-1' exists"),
        ({"region": "nowhere/x"}, "region", "No region 'nowhere/x' exists: name one as provider/code, such as "),
        ({"region": "aws/us-east-2"}, "region", "No region 'aws/us-east-2' exists. Did you mean aws/us-east-1"),
        ({"latitude": "1", "longitude": "2", "country": "DE"}, "location", "not coordinates and country"),
    ],
)
def test_route_rejects_bad_location(acme_client, chat_running, params, field, text):
    response = acme_client.get(url(chat_running), params)

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert text in response.json()[field][0]


def test_route_answer_has_no_note_when_routes_exist(acme_client, chat_running):
    response = acme_client.get(url(chat_running), {"latitude": "40.7", "longitude": "-74"})

    assert response.json()["routes"]
    assert response.json()["note"] is None


def test_route_note_when_scaled_to_zero(acme_client, acme_chat):
    Deployment.objects.filter(pk=acme_chat.pk).update(min_replicas=0, desired_replicas=0)
    routing.refresh_routes([acme_chat.pk], reason="test")

    response = acme_client.get(url(acme_chat), {"latitude": "40.7", "longitude": "-74"})

    assert response.status_code == 200, response.content
    assert response.json()["routes"] == []
    assert response.json()["note"].startswith("No route: the deployment is scaled to zero.")
    assert "cold_start" in response.json()["note"]


def test_route_note_when_every_serving_cluster_is_down(acme_client, chat_running):
    Cluster.objects.filter(name__in=["aws-use1-a", "aws-euw1-a"]).update(health=ClusterHealth.DOWN)
    routing.refresh_routes([chat_running.pk], reason="test")

    response = acme_client.get(url(chat_running), {"latitude": "40.7", "longitude": "-74"})

    assert response.json()["routes"] == []
    assert response.json()["note"].startswith("No route: every cluster that serves the deployment is down")


def test_route_note_before_any_replica_is_ready(acme_client, acme_chat):
    routing.refresh_routes([acme_chat.pk], reason="test")

    response = acme_client.get(url(acme_chat), {"latitude": "40.7", "longitude": "-74"})

    assert response.json()["routes"] == []
    assert response.json()["note"] == "No route: no replica of the deployment is placed and ready yet."


def test_route_of_other_customer_is_404(globex_client, chat_running):
    response = globex_client.get(url(chat_running), {"latitude": "40.7", "longitude": "-74"})

    assert response.status_code == 404


def test_route_unknown_deployment_is_404(acme_client, chat_running):
    response = acme_client.get(f"/api/v1/deployments/{chat_running.pk + 1000}/route/", {"country": "US"})

    assert response.status_code == 404


def test_route_for_staff(ops_client, chat_running):
    response = ops_client.get(url(chat_running), {"latitude": "40.7", "longitude": "-74"})

    assert response.status_code == 200
    assert len(response.json()["routes"]) == 2


def test_route_needs_authentication(anonymous_client, chat_running):
    response = anonymous_client.get(url(chat_running), {"latitude": "40.7", "longitude": "-74"})

    assert response.status_code in (401, 403)


def test_ping(acme_client, anonymous_client):
    assert acme_client.get("/api/v1/ping").json() == {"ok": True}
    assert anonymous_client.get("/api/v1/ping").status_code in (401, 403)


def test_route_in_schema(ops_client):
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)

    assert "/api/v1/deployments/{id}/route/" in schema["paths"]
    assert "/api/v1/ping" in schema["paths"]


def test_admin_routes_page_for_city(superuser_client, chat_running):
    page = f"/admin/placements/deployment/{chat_running.pk}/routes/"
    city = f"{chat_running.demand_origins.get(name='London').latitude},-0.1|London"

    response = superuser_client.get(page, {"city": city})

    assert response.status_code == 200
    html = response.content.decode()
    assert "Routes for London" in html
    assert html.index("aws-euw1-a") < html.index("aws-use1-a")


def test_admin_routes_page_rejects_unknown_city(settings, tmp_path, superuser_client, chat_running):
    settings.MCM_DATA_DIR = tmp_path

    response = superuser_client.get(f"/admin/placements/deployment/{chat_running.pk}/routes/", {"other": "Atlantis"})

    assert response.status_code == 200
    assert "No places file under MCM_DATA_DIR" in response.content.decode()


def test_admin_change_page_links_routes(superuser_client, chat_running):
    response = superuser_client.get(f"/admin/placements/deployment/{chat_running.pk}/change/")

    assert f"/admin/placements/deployment/{chat_running.pk}/routes/" in response.content.decode()
