"""Latency-aware routes: the healthy clusters that serve a deployment, ranked for a client's location.

The route table has one entry per deployment: the clusters that serve it now, with their
coordinates, ready replicas and spare capacity (``serving_entries``). It lives in Redis under
``mcm:routes:<database name>:<deployment id>`` and is rewritten after every plan, health change,
cordon, drain, outage and change of ready replicas (``schedule_route_refresh``). A request only
ranks the few entries of its deployment by distance (``rank_routes``). Without Redis
(``MCM_ROUTES_REDIS_URL`` unset, as in the embedded mode, or Redis not responding) every answer is
computed from the database, and ``source`` is "database".

A cluster serves a deployment when the current plan assigns it replicas there or a cluster
reports ready replicas of it (replicas that a newer plan moves away keep serving until their
replacements are ready). It is listed only when it reports at least one ready replica, complies
with the deployment's placement locks and is not lost (down, or under an open outage). A
cordoned or draining cluster stays listed while it runs ready replicas. A suspect cluster is
listed only when no healthy cluster serves the deployment, flagged ``"health": "suspect"``.
"""

import difflib
import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cache, partial
from pathlib import Path

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from compliance.locks import locks_by_subject, locks_for_deployments
from fleet.availability import AvailabilityReader
from fleet.models import Cluster, ClusterHealth, Region, TelemetrySnapshot
from fleet.places import PlaceIndex
from placements.models import Assignment, AutoscalingPolicy, Deployment, ExecutionStep, PlacementPlan
from placements.scheduler.geo import estimate_rtt_ms, haversine_km
from placements.scheduler.locks import lock_violation
from placements.scheduler.problem import ClusterInput, LockInput
from placements.services import current_plan
from placements.traffic import window_traffic

logger = logging.getLogger(__name__)

PLACES_FILE = Path("world-populated-places-naturalearth") / "ne_10m_populated_places_simple.csv"
# Seconds of measured traffic behind a cluster's served requests per second.
TRAFFIC_WINDOW_S = 60.0
# A table entry expires after this many seconds, so that spare capacity follows traffic (which
# triggers no refresh) and an entry that a failed refresh left behind does not outlive it for long.
ROUTES_TTL_S = 60
# Redis calls time out after this many seconds; after a failure the table is not tried again for
# REDIS_RETRY_AFTER_S, so a dead Redis costs one failed call per process and period, not one per request.
REDIS_TIMEOUT_S = 0.1
REDIS_RETRY_AFTER_S = 5.0
# Connection errors are logged at most once per this many seconds per process.
REDIS_LOG_EVERY_S = 60.0
# Proximity scale of the weights: each PROXIMITY_MS of estimated round-trip time beyond the nearest
# listed cluster divides a cluster's share by e. A chosen value, not a measured one.
PROXIMITY_MS = 20.0


# Client locations.


@dataclass(frozen=True)
class ClientLocation:
    """Where a client is, and how MCM found it: "coordinates", "country DE: Berlin", "region aws/eu-central-1"."""

    latitude: float
    longitude: float
    label: str
    source: str


def resolve_location(*, latitude=None, longitude=None, country=None, region=None) -> ClientLocation:
    """Return the client location from exactly one kind of parameter; raise ``ValidationError`` keyed by parameter.

    ``latitude`` and ``longitude`` are decimal degrees. ``country`` is an ISO 3166-1 alpha-2
    code. ``region`` is ``provider/code`` as MCM stores it, or a bare code that one provider uses.
    """
    given = {"coordinates": latitude not in (None, "") or longitude not in (None, "")}
    given["country"] = country not in (None, "")
    given["region"] = region not in (None, "")
    kinds = [kind for kind, present in given.items() if present]
    if not kinds:
        raise ValidationError({"location": ["missing: give latitude and longitude, or country, or region."]})
    if len(kinds) > 1:
        raise ValidationError(
            {"location": [f"give one kind of location, not {' and '.join(kinds)}: latitude and longitude, "
                          "or country, or region."]}
        )  # fmt: skip
    if given["coordinates"]:
        lat = parse_coordinate("latitude", latitude, 90.0)
        lon = parse_coordinate("longitude", longitude, 180.0)
        return ClientLocation(lat, lon, f"{lat:.4f}, {lon:.4f}", "coordinates")
    if given["country"]:
        return locate_country(str(country))
    return locate_region(str(region))


def parse_coordinate(name: str, value, limit: float) -> float:
    if value in (None, ""):
        raise ValidationError({name: ["missing: latitude and longitude go together."]})
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError({name: [f"{value!r} is not a number of degrees."]}) from None
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise ValidationError({name: [f"{value!r} is out of range: use -{limit:g} to {limit:g} degrees."]})
    return number


@cache
def place_index(data_dir: str) -> PlaceIndex | None:
    """Return the Natural Earth place index under ``data_dir``, read once per process; None when absent."""
    path = Path(data_dir) / PLACES_FILE
    return PlaceIndex.from_csv(path) if path.is_file() else None


def places() -> PlaceIndex | None:
    return place_index(str(settings.MCM_DATA_DIR))


def locate_country(text: str) -> ClientLocation:
    """Locate a country by its most populous place, else by the mean of MCM's regions there."""
    code = text.strip().upper()
    if len(code) != 2 or not code.isalpha():
        raise ValidationError({"country": [f"{text!r} is not an ISO 3166-1 alpha-2 country code, such as DE."]})
    index = places()
    place = index.by_country.get(code) if index is not None else None
    if place is not None:
        return ClientLocation(place.latitude, place.longitude, place.name, f"country {code}: {place.name}")
    points = list(Region.objects.filter(country_code=code).values_list("latitude", "longitude"))
    if points:
        latitude = sum(point[0] for point in points) / len(points)
        longitude = sum(point[1] for point in points) / len(points)
        return ClientLocation(latitude, longitude, code, f"country {code}: mean of {len(points)} MCM regions")
    where = "the places file and MCM's regions" if index is not None else "MCM's regions (no places file)"
    raise ValidationError({"country": [f"{text!r} is unknown: no place in {where} has this country code."]})


def locate_region(text: str) -> ClientLocation:
    """Locate a region given as ``provider/code``, or as a bare code that only one provider uses."""
    provider, _, code = text.strip().rpartition("/")
    regions = Region.objects.filter(code=code).select_related("provider")
    if provider:
        regions = regions.filter(provider__name=provider)
    found = list(regions[:2])
    if not found:
        raise ValidationError({"region": [unknown_region_message(text)]})
    if len(found) > 1:
        raise ValidationError(
            {"region": [f"{text!r} is used by several providers: name one as provider/code, such as {found[0]}."]}
        )
    region = found[0]
    return ClientLocation(region.latitude, region.longitude, region.city or str(region), f"region {region}")


def unknown_region_message(text: str) -> str:
    """Say that no region ``text`` exists, and name up to three regions with similar names."""
    keys = [str(region) for region in Region.objects.select_related("provider")]
    codes = {key.rpartition("/")[2]: key for key in keys}
    wanted = text.strip()
    near = difflib.get_close_matches(wanted, keys, n=3, cutoff=0.6)
    if not near and "/" not in wanted:
        near = [codes[code] for code in difflib.get_close_matches(wanted, list(codes), n=3, cutoff=0.6)]
    message = f"No region {text!r} exists"
    if near:
        return f"{message}. Did you mean {', '.join(near)}?"
    return f"{message}: name one as provider/code, such as {keys[0] if keys else 'aws/eu-central-1'}."


def locate_city(name: str) -> ClientLocation | None:
    """Return the most populous place called ``name`` in the places file; None when absent or unknown."""
    index = places()
    if index is None:
        return None
    candidates = index.by_name.get("".join(ch for ch in name.lower() if ch.isalnum()), [])
    if not candidates:
        return None
    place = max(candidates, key=lambda candidate: candidate.population)
    return ClientLocation(place.latitude, place.longitude, place.name, f"city {place.name}, {place.country_code}")


# The serving clusters, read from the database.


def serving_entries(deployment_ids: Iterable[int] | None = None, *, now: datetime | None = None) -> dict[int, dict]:
    """Build the route table entry of each deployment (all when ``deployment_ids`` is None), from the database.

    Given ids, it reads only what those deployments need: their assignments, steps, ready
    replicas, locks and traffic. Without ids, each kind of row is read once for all deployments.
    """
    now = now or timezone.now()
    deployments = Deployment.objects.select_related("autoscaling")
    if deployment_ids is not None:
        deployments = deployments.filter(pk__in=list(deployment_ids))
    deployments = list(deployments)
    ids = None if deployment_ids is None else [deployment.pk for deployment in deployments]
    if ids == []:
        return {}
    plan = current_plan()
    planned = planned_replicas(ids, plan)
    ready = ready_replicas(ids, plan)
    clusters = {
        cluster.pk: cluster
        for cluster in Cluster.objects.select_related("region__provider").filter(
            pk__in={cluster_id for by_cluster in (*planned.values(), *ready.values()) for cluster_id in by_cluster}
        )
    }
    reader = AvailabilityReader(now)
    availability = {pk: reader(cluster) for pk, cluster in clusters.items()}
    by_customer, by_deployment = deployment_locks(deployments, everyone=ids is None)
    served = served_rps(ids, now)
    refreshed_at = now.isoformat()
    entries = {}
    for deployment in deployments:
        locks = by_customer.get(deployment.customer_id, []) + by_deployment.get(deployment.pk, [])
        capacity = replica_capacity_rps(deployment)
        listed, suspect, excluded = [], [], []
        for cluster_id in sorted(set(planned.get(deployment.pk, {})) | set(ready.get(deployment.pk, {}))):
            cluster = clusters[cluster_id]
            ready_count = ready.get(deployment.pk, {}).get(cluster_id, 0)
            reason = exclusion_reason(cluster, availability[cluster_id], locks, ready_count)
            if reason:
                excluded.append({"cluster": cluster.name, "reason": reason})
                continue
            served_here = served.get(deployment.pk, {}).get(cluster_id, 0.0)
            entry = {
                "id": cluster.pk,
                "name": cluster.name,
                "provider": cluster.region.provider.name,
                "region": f"{cluster.region.provider.name}/{cluster.region.code}",
                "latitude": cluster.region.latitude,
                "longitude": cluster.region.longitude,
                "ready_replicas": ready_count,
                "planned_replicas": planned.get(deployment.pk, {}).get(cluster_id, 0),
                "health": cluster.health,
                "availability": availability[cluster_id].reason,
                "capacity_rps": round(ready_count * capacity, 3),
                "served_rps": round(served_here, 3),
                "spare_rps": round(max(0.0, ready_count * capacity - served_here), 3),
            }
            (suspect if cluster.health == ClusterHealth.SUSPECT else listed).append(entry)
        if listed:
            excluded += [{"cluster": entry["name"], "reason": "suspect; a healthy cluster serves"} for entry in suspect]
        entries[deployment.pk] = {
            "deployment": deployment.pk,
            "refreshed_at": refreshed_at,
            "clusters": listed or suspect,
            "excluded": excluded,
        }
    return entries


def exclusion_reason(cluster: Cluster, availability, locks, ready_count: int) -> str:
    """Return why ``cluster`` is not a route of the deployment, or "" when it is one."""
    if availability.lost:
        return f"lost ({availability.reason})"
    cluster_input = ClusterInput(
        id=cluster.pk,
        name=cluster.name,
        provider=cluster.region.provider.name,
        region=f"{cluster.region.provider.name}/{cluster.region.code}",
        jurisdiction=cluster.region.jurisdiction,
        latitude=cluster.region.latitude,
        longitude=cluster.region.longitude,
        capabilities=frozenset(cluster.capabilities),
    )
    for lock in locks:
        violation = lock_violation(lock, cluster_input)
        if violation:
            return f"outside the locks: {violation}"
    if ready_count < 1:
        return f"no ready replica ({availability.reason})"
    return ""


def deployment_locks(
    deployments: list[Deployment], *, everyone: bool
) -> tuple[dict[int, list[LockInput]], dict[int, list[LockInput]]]:
    """Return the placement locks that bind these deployments: (customer id -> locks, deployment id -> locks).

    With ``everyone``, read every lock at once, as ``compliance.locks.locks_by_subject`` does.
    Otherwise read only the locks of these deployments and the customer-wide locks of their customers.
    """
    if everyone:
        return locks_by_subject()
    return locks_for_deployments(deployments)


def planned_replicas(deployment_ids: list[int] | None, plan: PlacementPlan | None) -> dict[int, dict[int, int]]:
    """Return the replicas per deployment and cluster in ``plan``, the current applied plan (all when ids is None)."""
    planned: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    if plan is None:
        return {}
    rows = Assignment.objects.filter(plan=plan)
    if deployment_ids is not None:
        rows = rows.filter(deployment_id__in=deployment_ids)
    for deployment_id, cluster_id, replicas in rows.values_list("deployment_id", "cluster_id", "replicas"):
        planned[deployment_id][cluster_id] += replicas
    return planned


# One row per wanted deployment in each cluster's latest successful snapshot (every deployment
# when %(every)s). The (cluster, -taken_at) index finds that snapshot. A cluster in %(clusters)s
# that reports none of them still gets one row, because its snapshot time is needed.
LATEST_READY_SQL = """
SELECT cluster.id, latest.taken_at, observed.key, observed.value ->> 'ready'
FROM {cluster} AS cluster
CROSS JOIN LATERAL (
    SELECT snapshot.taken_at, snapshot.deployments FROM {snapshot} AS snapshot
    WHERE snapshot.cluster_id = cluster.id AND snapshot.ok
    ORDER BY snapshot.taken_at DESC LIMIT 1
) AS latest
LEFT JOIN LATERAL jsonb_each(latest.deployments) AS observed
    ON %(every)s OR observed.key = ANY(%(keys)s)
WHERE observed.key IS NOT NULL OR cluster.id = ANY(%(clusters)s)
"""


def ready_replicas(deployment_ids: list[int] | None, plan: PlacementPlan | None) -> dict[int, dict[int, int]]:
    """Return the latest observed ready replicas per deployment and cluster (all deployments when ids is None).

    Each cluster's latest successful telemetry snapshot gives its ready replicas. An execution
    step of ``plan`` (the current plan) that observed the cluster after that snapshot wins for
    its deployment.
    """
    steps = []
    if plan is not None:
        rows = ExecutionStep.objects.filter(plan=plan, observed_ready__isnull=False)
        if deployment_ids is not None:
            rows = rows.filter(deployment_id__in=deployment_ids)
        steps = list(rows.values_list("deployment_id", "cluster_id", "observed_ready", "updated_at"))
    ready: dict[int, dict[int, int]] = defaultdict(dict)
    taken: dict[int, datetime] = {}
    if connection.vendor == "postgresql":
        latest = _latest_ready_postgresql(deployment_ids, {cluster_id for _, cluster_id, _, _ in steps})
    else:
        latest = _latest_ready_portable(deployment_ids)
    for cluster_id, taken_at, deployment_id, observed in latest:
        taken[cluster_id] = taken_at
        if deployment_id is not None and observed is not None and observed.isdigit() and int(observed) > 0:
            ready[int(deployment_id)][cluster_id] = int(observed)
    for deployment_id, cluster_id, observed_ready, updated_at in steps:
        if cluster_id not in taken or updated_at > taken[cluster_id]:
            ready[deployment_id][cluster_id] = observed_ready
    return {
        deployment_id: {cluster_id: count for cluster_id, count in by_cluster.items() if count > 0}
        for deployment_id, by_cluster in ready.items()
    }


def _latest_ready_postgresql(
    deployment_ids: list[int] | None, step_clusters: set[int]
) -> list[tuple[int, datetime, str | None, str | None]]:
    """Read (cluster, snapshot time, deployment key, ready) from each cluster's latest ok snapshot in one query."""
    query = LATEST_READY_SQL.format(
        cluster=connection.ops.quote_name(Cluster._meta.db_table),
        snapshot=connection.ops.quote_name(TelemetrySnapshot._meta.db_table),
    )
    params = {
        "every": deployment_ids is None,
        "keys": [str(pk) for pk in deployment_ids or []],
        "clusters": sorted(step_clusters),
    }
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def _latest_ready_portable(deployment_ids: list[int] | None) -> list[tuple[int, datetime, str | None, str | None]]:
    """Read the same rows as ``_latest_ready_postgresql`` through the ORM, for SQLite in the embedded mode.

    It loads each cluster's whole latest snapshot, which is fine for the embedded mode's fleets.
    """
    latest = TelemetrySnapshot.objects.filter(cluster_id=OuterRef("pk"), ok=True).order_by("-taken_at")
    snapshot_ids = Cluster.objects.annotate(latest=Subquery(latest.values("pk")[:1])).values_list("latest", flat=True)
    snapshots = TelemetrySnapshot.objects.filter(pk__in=[pk for pk in snapshot_ids if pk is not None])
    wanted = None if deployment_ids is None else {str(pk) for pk in deployment_ids}
    rows: list[tuple[int, datetime, str | None, str | None]] = []
    for cluster_id, taken_at, deployments in snapshots.values_list("cluster_id", "taken_at", "deployments"):
        rows.append((cluster_id, taken_at, None, None))
        for key, observed in (deployments or {}).items():
            if (wanted is None or key in wanted) and isinstance(observed, dict):
                rows.append((cluster_id, taken_at, key, str(observed.get("ready", ""))))
    return rows


def replica_capacity_rps(deployment: Deployment) -> float:
    """Requests per second one replica serves at full load: concurrency target / mean request duration.

    Deployments without an autoscaling policy get the policy model's defaults.
    """
    try:
        policy = deployment.autoscaling
    except AutoscalingPolicy.DoesNotExist:
        policy = AutoscalingPolicy()
    return policy.target_concurrency / policy.seconds_per_request


def served_rps(deployment_ids: list[int] | None, now: datetime) -> dict[int, dict[int, float]]:
    """Measured requests per second per deployment and cluster over the last ``TRAFFIC_WINDOW_S`` (all when None)."""
    windows = window_traffic(deployment_ids, window_s=TRAFFIC_WINDOW_S, now=now)
    return {deployment_id: dict(window.by_cluster) for deployment_id, window in windows.items()}


# Ranking for one client.


def rank_routes(entry: dict, location: ClientLocation) -> list[dict]:
    """Rank a table entry's clusters for a client: those with spare capacity nearest first, then full ones.

    A cluster's weight is proportional to spare_rps * exp(-(rtt_ms - nearest rtt_ms) / PROXIMITY_MS),
    so nearer clusters with room get more. A full cluster gets weight 0. When every listed cluster
    is full, capacity_rps replaces spare_rps, because the traffic still has to go somewhere.
    Weights sum to 1 over the listed clusters, up to rounding to 4 decimals.
    """
    routes = []
    for cluster in entry["clusters"]:
        distance = haversine_km(location.latitude, location.longitude, cluster["latitude"], cluster["longitude"])
        routes.append((cluster, distance, float(estimate_rtt_ms(distance))))
    if not routes:
        return []
    nearest = min(rtt for _, _, rtt in routes)
    key = "spare_rps" if any(cluster["spare_rps"] > 0 for cluster, _, _ in routes) else "capacity_rps"
    scores = [cluster[key] * math.exp(-(rtt - nearest) / PROXIMITY_MS) for cluster, _, rtt in routes]
    total = sum(scores)
    result = []
    for (cluster, distance, rtt), score in zip(routes, scores, strict=True):
        result.append(
            {
                "cluster": cluster["name"],
                "cluster_id": cluster["id"],
                "provider": cluster["provider"],
                "region": cluster["region"],
                "latitude": cluster["latitude"],
                "longitude": cluster["longitude"],
                "distance_km": round(distance, 1),
                "rtt_ms": round(rtt, 1),
                "ready_replicas": cluster["ready_replicas"],
                "spare_requests_per_second": cluster["spare_rps"],
                "weight": round(score / total, 4) if total > 0 else round(1 / len(routes), 4),
                "health": cluster["health"],
            }
        )
    result.sort(key=lambda route: (route["weight"] == 0, route["distance_km"]))
    return result


def routes_for(deployment_id: int, location: ClientLocation) -> dict:
    """Return the ranked routes of a deployment for a client, from the Redis table when Redis responds."""
    entry, source = table_entry(deployment_id)
    routes = rank_routes(entry, location)
    return {
        "deployment": deployment_id,
        "client": asdict(location),
        "source": source,
        "refreshed_at": entry["refreshed_at"],
        "routes": routes,
        "excluded": entry["excluded"],
        "note": None if routes else no_route_note(deployment_id, entry["excluded"]),
    }


def no_route_note(deployment_id: int, excluded: list[dict]) -> str:
    """Say why a deployment has no route: scaled to zero, no ready replica yet, or every serving cluster lost."""
    desired = Deployment.objects.filter(pk=deployment_id).values_list("desired_replicas", flat=True).first()
    if desired == 0:
        return (
            "No route: the deployment is scaled to zero. The first request waits for a replica to start; "
            "see cold_start on the deployment."
        )
    if excluded and all(item["reason"].startswith("lost") for item in excluded):
        return "No route: every cluster that serves the deployment is down or lost; see excluded."
    if excluded:
        return "No route: no cluster has a ready replica the deployment may use yet; see excluded."
    return "No route: no replica of the deployment is placed and ready yet."


# The table in Redis.


class RouteTable:
    """The process's Redis connection for the route table, with its back-off after failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: dict[str, redis.Redis] = {}
        self.skip_until = 0.0
        self.last_logged = -math.inf
        # True after a write was lost: on the next successful call the table is emptied first,
        # because it may hold entries that the lost refresh should have replaced.
        self.stale = False

    def client(self) -> redis.Redis | None:
        url = settings.MCM_ROUTES_REDIS_URL
        if not url or time.monotonic() < self.skip_until:
            return None
        with self.lock:
            if url not in self.clients:
                self.clients[url] = redis.Redis.from_url(
                    url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
                )
            return self.clients[url]

    def failed(self, error: Exception, doing: str) -> None:
        self.skip_until = time.monotonic() + REDIS_RETRY_AFTER_S
        self.stale = True
        if time.monotonic() - self.last_logged >= REDIS_LOG_EVERY_S:
            self.last_logged = time.monotonic()
            logger.warning(
                "route table in Redis unavailable while %s: %s; computing routes from the database for %.0f s",
                doing,
                error,
                REDIS_RETRY_AFTER_S,
            )

    def recover(self, client: redis.Redis) -> None:
        """Empty this database's table after lost writes, so no entry older than them is served."""
        if not self.stale:
            return
        keys = list(client.scan_iter(match=f"{key_prefix()}*", count=1000))
        if keys:
            client.delete(*keys)
        self.stale = False
        logger.info("route table in Redis reachable again: removed %s entries written before the failure", len(keys))


TABLE = RouteTable()


def key_prefix() -> str:
    return f"mcm:routes:{settings.DATABASES['default']['NAME']}:"


def route_key(deployment_id: int) -> str:
    return f"{key_prefix()}{deployment_id}"


def table_entry(deployment_id: int) -> tuple[dict, str]:
    """Return a deployment's table entry and its source: "cache", or "database" when Redis had none."""
    client = TABLE.client()
    if client is not None:
        try:
            TABLE.recover(client)
            cached = client.get(route_key(deployment_id))
        except redis.RedisError as error:
            TABLE.failed(error, "reading")
        else:
            if cached is not None:
                return json.loads(cached), "cache"
    entry = serving_entries([deployment_id]).get(deployment_id) or empty_entry(deployment_id)
    if client is not None and TABLE.skip_until <= time.monotonic():
        # NX: a refresh that ran meanwhile wrote a newer entry, which this one must not replace.
        try:
            client.set(route_key(deployment_id), json.dumps(entry), ex=ROUTES_TTL_S, nx=True)
        except redis.RedisError as error:
            TABLE.failed(error, "writing")
    return entry, "database"


def empty_entry(deployment_id: int) -> dict:
    return {"deployment": deployment_id, "refreshed_at": timezone.now().isoformat(), "clusters": [], "excluded": []}


def cached_entries(deployment_ids: Iterable[int]) -> dict[int, dict] | None:
    """Return the table entries Redis holds for these deployments; None when the table is unavailable."""
    ids = list(deployment_ids)
    client = TABLE.client()
    if client is None:
        return None
    try:
        TABLE.recover(client)
        values = client.mget([route_key(pk) for pk in ids]) if ids else []
    except redis.RedisError as error:
        TABLE.failed(error, "reading")
        return None
    return {pk: json.loads(value) for pk, value in zip(ids, values, strict=True) if value is not None}


def refresh_routes(deployment_ids: Iterable[int] | None = None, *, reason: str) -> int:
    """Rewrite the table entries of these deployments (all when None); return the entries written.

    Returns 0 without raising when Redis is not configured or not responding: requests then
    compute their routes from the database until it responds again.
    """
    ids = None if deployment_ids is None else list(deployment_ids)
    client = TABLE.client()
    if client is None:
        if settings.MCM_ROUTES_REDIS_URL:
            TABLE.stale = True
        return 0
    started = time.perf_counter()
    entries = serving_entries(ids)
    try:
        TABLE.recover(client)
        with client.pipeline(transaction=False) as pipe:
            for deployment_id, entry in entries.items():
                pipe.set(route_key(deployment_id), json.dumps(entry), ex=ROUTES_TTL_S)
            if ids is not None:
                for deployment_id in set(ids) - entries.keys():
                    pipe.delete(route_key(deployment_id))
            pipe.execute()
    except redis.RedisError as error:
        TABLE.failed(error, "writing")
        return 0
    logger.info(
        "routes of %s deployments refreshed (%s) in %.3f s", len(entries), reason, time.perf_counter() - started
    )
    return len(entries)


def schedule_route_refresh(deployment_ids: Iterable[int] | None = None, *, reason: str) -> None:
    """Refresh the routes of these deployments (all when None) once the current transaction commits.

    The refresh runs in the committing process. A failure is logged and never reaches the caller.
    """
    ids = None if deployment_ids is None else sorted(set(deployment_ids))
    if ids == []:
        return
    transaction.on_commit(partial(refresh_quietly, ids, reason), using=connection.alias)


def refresh_quietly(deployment_ids: list[int] | None, reason: str) -> None:
    try:
        refresh_routes(deployment_ids, reason=reason)
    except Exception:
        # A route refresh follows a change that has already committed; it must not fail that change.
        logger.exception("route refresh (%s) for deployments %s failed", reason, deployment_ids or "all")


def ready_changes(snapshots: Iterable[TelemetrySnapshot]) -> set[int]:
    """Return the deployments whose ready replicas on a cluster differ in these new, unsaved snapshots.

    Each successful snapshot is compared with the latest successful one stored for its cluster.
    """
    fresh = {snapshot.cluster_id: snapshot.deployments for snapshot in snapshots if snapshot.ok}
    if not fresh:
        return set()
    latest = TelemetrySnapshot.objects.filter(cluster=OuterRef("pk"), ok=True).order_by("-taken_at").values("pk")[:1]
    previous_ids = (
        Cluster.objects.filter(pk__in=list(fresh)).annotate(snapshot_id=Subquery(latest)).values_list("snapshot_id")
    )
    previous = dict(
        TelemetrySnapshot.objects.filter(pk__in=[pk for (pk,) in previous_ids if pk is not None]).values_list(
            "cluster_id", "deployments"
        )
    )
    changed = set()
    for cluster_id, deployments in fresh.items():
        before = previous.get(cluster_id, {})
        for deployment_id in deployments.keys() | before.keys():
            if deployments.get(deployment_id, {}).get("ready", 0) != before.get(deployment_id, {}).get("ready", 0):
                changed.add(int(deployment_id))
    return changed
