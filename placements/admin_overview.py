"""The admin's overview page of one deployment: where it runs and why, where its users are, and its history.

One page gathers what the change page spreads over fields and links. It shows the current plan's
replicas and the demand origins on a world map, and ranked routes for a chosen city
(``placements.routing``). Then come the effective lock, the customer-facing explanation
(``placements.explain``), the autoscaler's decisions, and the audit trail of the deployment and
of the locks that bind it.
"""

from dataclasses import dataclass, replace

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from compliance.admin import effective_lock_html
from compliance.models import AuditEvent
from compliance.roles import AUDIT_VIEW, LOCK_VIEW
from fleet.availability import AvailabilityReader
from fleet.models import Cluster
from fleet.worldmap import (
    REGION_MAX_RADIUS,
    REGION_MIN_RADIUS,
    clusters_health,
    count_lost_and_suspect,
    fit_viewbox,
    map_context,
    project,
    region_place,
    scaled_radius,
)
from placements.admin_routes import CityForm, city_choices
from placements.explain import explain_for_customer
from placements.models import Assignment, Deployment, PlacementPlan, ScalingDecision
from placements.routing import routes_for
from placements.scheduler.geo import estimate_rtt_ms, haversine_km
from placements.services import current_plan

# Rows of the scaling history and of the audit trail shown on the page.
SCALING_ROWS = 20
AUDIT_ROWS = 30
# Side of an origin's diamond, in degrees on the world map, for the smallest and the largest share of traffic.
ORIGIN_MIN_SIZE = 1.4
ORIGIN_MAX_SIZE = 3.6
# Radius of the chosen city's marker, in degrees on the world map.
CLIENT_RADIUS = 0.9


@dataclass(frozen=True)
class ReplicaSite:
    """Replicas of the deployment in one region under the current plan, with the health of its clusters there."""

    key: str  # "provider/code"
    label: str
    latitude: float
    longitude: float
    clusters: list[str]
    replicas: int
    health: str
    x: float = 0.0
    y: float = 0.0
    radius: float = 0.0


def replica_sites(deployment: Deployment, plan: PlacementPlan | None) -> tuple[list[Assignment], list[ReplicaSite]]:
    """Return the plan's assignments of the deployment and the same replicas grouped by region."""
    if plan is None:
        return [], []
    assignments = list(
        Assignment.objects.filter(plan=plan, deployment=deployment)
        .select_related("cluster__region__provider", "sku")
        .order_by("cluster__region__provider__name", "cluster__region__code", "cluster__name")
    )

    reader = AvailabilityReader()
    grouped: dict[int, list[Assignment]] = {}
    for assignment in assignments:
        grouped.setdefault(assignment.cluster.region_id, []).append(assignment)
    sites = []
    for rows in grouped.values():
        clusters = sorted({row.cluster for row in rows}, key=lambda cluster: cluster.name)
        sites.append(
            ReplicaSite(
                **region_place(rows[0].cluster.region),
                clusters=[cluster.name for cluster in clusters],
                replicas=sum(row.replicas for row in rows),
                health=worst_health(clusters, reader),
            )
        )

    largest = max((site.replicas for site in sites), default=0)
    placed = []
    for site in sites:
        x, y = project(site.latitude, site.longitude)
        radius = scaled_radius(site.replicas, largest, REGION_MIN_RADIUS, REGION_MAX_RADIUS)
        placed.append(replace(site, x=x, y=y, radius=radius))
    return assignments, placed


def worst_health(clusters: list[Cluster], reader: AvailabilityReader) -> str:
    lost, suspect = count_lost_and_suspect(clusters, [reader(cluster) for cluster in clusters])
    return clusters_health(len(clusters), lost, suspect)


def origin_rows(deployment: Deployment, sites: list[ReplicaSite]) -> list[dict]:
    """Return the demand origins with their map position and the nearest region that runs replicas."""
    origins = list(deployment.demand_origins.all())
    largest = max((origin.share for origin in origins), default=0.0)
    rows = []
    for origin in origins:
        x, y = project(origin.latitude, origin.longitude)
        size = scaled_radius(origin.share, largest, ORIGIN_MIN_SIZE, ORIGIN_MAX_SIZE)
        nearest = None
        for site in sites:
            distance = haversine_km(origin.latitude, origin.longitude, site.latitude, site.longitude)
            if nearest is None or distance < nearest[1]:
                nearest = (site, distance)
        rows.append(
            {
                "origin": origin,
                "x": x,
                "y": y,
                "size": size,
                "nearest": nearest[0] if nearest else None,
                "distance_km": round(nearest[1]) if nearest else None,
                "rtt_ms": round(estimate_rtt_ms(nearest[1])) if nearest else None,
            }
        )
    return rows


def route_answer(request, deployment: Deployment) -> tuple[CityForm, dict | None, list[dict]]:
    """Return the city form, the ranked routes for its city and the route lines for the map.

    Without a chosen city the page shows the routes from the first choice: the largest demand
    origin, or the first city of MCM's regions.
    """
    data = request.GET if ("city" in request.GET or "other" in request.GET) else None
    if data is None:
        choices = city_choices(deployment)
        data = {"city": choices[0][0]} if choices else None
    form = CityForm(data, deployment=deployment)
    if not form.is_valid():
        return form, None, []
    answer = routes_for(deployment.pk, form.cleaned_data["location"])
    client = answer["client"]
    client_x, client_y = project(client["latitude"], client["longitude"])
    answer["x"], answer["y"] = client_x, client_y
    lines = []
    for route in answer["routes"]:
        x, y = project(route["latitude"], route["longitude"])
        width = round(1 + 5 * route["weight"], 1)  # screen pixels: the map draws strokes unscaled
        lines.append({"route": route, "x1": client_x, "y1": client_y, "x2": x, "y2": y, "width": width})
    return form, answer, lines


def zoom_map(sites: list[ReplicaSite], origins: list[dict], answer: dict | None, lines: list[dict]) -> dict:
    """Fit the map's view box to the replicas, the users and the routes, and scale their markers to it.

    Returns the map's context: ``map_viewbox``, the scaled ``sites`` and the chosen city's marker radius.
    Origins get their diamond's corner, scaled, in place.
    """
    points = [(site.x, site.y) for site in sites] + [(row["x"], row["y"]) for row in origins]
    points += [(line["x2"], line["y2"]) for line in lines]
    if answer:
        points.append((answer["x"], answer["y"]))
    viewbox, zoom = fit_viewbox(points)
    for row in origins:
        row["size"] = round(row["size"] * zoom, 3)
        row["corner_x"] = round(row["x"] - row["size"] / 2, 3)
        row["corner_y"] = round(row["y"] - row["size"] / 2, 3)
    return {
        "map_viewbox": viewbox,
        "sites": [replace(site, radius=round(site.radius * zoom, 3)) for site in sites],
        "client_radius": round(CLIENT_RADIUS * zoom, 3),
    }


def audit_filter(deployment: Deployment) -> Q:
    """Return a filter on ``AuditEvent`` for the deployment's own events and those of the locks that bind it.

    Lock events carry the lock's snapshot as before and after, so a lock deleted since, or moved to
    another subject, still matches through the side that named this deployment, its customer or
    the platform.
    """
    locks = Q()
    for side in ("before", "after"):
        locks |= Q(**{f"{side}__deployment": str(deployment)})
        locks |= Q(**{f"{side}__level": "customer", f"{side}__customer": deployment.customer.name})
        locks |= Q(**{f"{side}__level": "platform"})
    own = Q(subject_type=Deployment._meta.label_lower, subject_id=str(deployment.pk))
    return own | (Q(subject_type="compliance.placementlock") & locks)


def overview_view(model_admin: admin.ModelAdmin, request, object_id: int):
    if not model_admin.has_view_permission(request):
        raise PermissionDenied(
            "This page needs the permission placements.view_deployment: ask for the ops, compliance or auditor role."
        )
    deployment = get_object_or_404(model_admin.get_queryset(request).select_related("customer", "sku"), pk=object_id)
    plan = current_plan()
    assignments, sites = replica_sites(deployment, plan)
    form, answer, route_lines = route_answer(request, deployment)
    user = request.user
    can_view_lock = user.has_perm(LOCK_VIEW)
    can_view_audit = user.has_perm(AUDIT_VIEW)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"Overview of {deployment}",
        "deployment": deployment,
        "plan": plan,
        "assignments": assignments,
        "sites": sites,
        "origins": origin_rows(deployment, sites),
        "form": form,
        "answer": answer,
        "route_lines": route_lines,
        "explanation": explain_for_customer(deployment),
        "scaling": list(ScalingDecision.objects.filter(deployment=deployment).select_related("plan")[:SCALING_ROWS]),
        "autoscaling": getattr(deployment, "autoscaling", None),
        "can_view_lock": can_view_lock,
        "lock_html": effective_lock_html(deployment) if can_view_lock else "",
        "can_view_audit": can_view_audit,
        "audit": list(
            AuditEvent.objects.visible_to(user)
            .filter(audit_filter(deployment))
            .order_by("-created_at", "-id")[:AUDIT_ROWS]
        )
        if can_view_audit
        else [],
    }
    context.update(map_context())
    context.update(zoom_map(sites, context["origins"], answer, route_lines))
    return TemplateResponse(request, "admin/placements/deployment/overview.html", context)


@admin.display(description="overview")
def overview_link(deployment: Deployment) -> str:
    if deployment.pk is None:
        return "-"
    url = reverse("admin:placements_deployment_overview", args=[deployment.pk])
    return format_html('<a href="{}">Overview: map, routes, lock, explanation and history</a>', url)
