"""Routes of the REST API under /api/v1/: kebab-case plural resource names."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from compliance.api import AuditEventViewSet
from compliance.api_locks import PlacementLockViewSet
from fleet.api import (
    AlertViewSet,
    ClusterCapacityViewSet,
    ClusterViewSet,
    GpuSkuViewSet,
    OutageViewSet,
    ProviderViewSet,
    RegionViewSet,
)
from fleet.api_events import EventIngestView
from placements.api import DeploymentViewSet, FailoverRequestViewSet, PlacementPlanViewSet
from placements.api_routing import DeploymentRouteView, PingView
from placements.api_tokens import ApiTokenViewSet
from placements.api_traffic import DeploymentTrafficView

router = DefaultRouter()
router.register("providers", ProviderViewSet, basename="provider")
router.register("regions", RegionViewSet, basename="region")
router.register("gpu-skus", GpuSkuViewSet, basename="gpu-sku")
router.register("clusters", ClusterViewSet, basename="cluster")
router.register("capacities", ClusterCapacityViewSet, basename="capacity")
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("plans", PlacementPlanViewSet, basename="plan")
router.register("failover-requests", FailoverRequestViewSet, basename="failover-request")
router.register("outages", OutageViewSet, basename="outage")
router.register("alerts", AlertViewSet, basename="alert")
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("locks", PlacementLockViewSet, basename="lock")
router.register("tokens", ApiTokenViewSet, basename="api-token")

# Agents post to "events" without a trailing slash; both forms reach the view, and only one is in the schema.
urlpatterns = router.urls + [
    path("events", EventIngestView.as_view(), name="event-ingest"),
    path("events/", EventIngestView.as_view(schema=None), name="event-ingest-slash"),
    path("deployments/<int:pk>/route/", DeploymentRouteView.as_view(), name="deployment-route"),
    path("deployments/<int:pk>/route", DeploymentRouteView.as_view(schema=None), name="deployment-route-no-slash"),
    path("ping", PingView.as_view(), name="ping"),
    path("deployments/<int:pk>/traffic/", DeploymentTrafficView.as_view(), name="deployment-traffic"),
]
