"""An offline world map for admin pages: Natural Earth land outlines as SVG, and markers placed on them.

The land comes from ``fleet/mapdata/land-110m.json`` (TopoJSON from the world-atlas package; see
PROVENANCE.md beside it). Pages draw it inline, so the map needs no tile server and no request
leaves MCM.

Coordinates are projected equirectangularly into SVG user units of one degree: x is
longitude + 180 and y is 90 - latitude, so the whole world spans 360 x 180 units. ``VIEWBOX``
crops the polar bands, where no region lies, and pages scale the SVG to their width.
"""

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fleet.models import ClusterHealth

LAND_FILE = Path(__file__).resolve().parent / "mapdata" / "land-110m.json"

# Latitudes shown: from 84 N (north of Greenland's coast) to 58 S (south of Cape Horn).
NORTH_LAT = 84.0
SOUTH_LAT = -58.0
VIEWBOX = f"0 {90 - NORTH_LAT:g} 360 {NORTH_LAT - SOUTH_LAT:g}"
# Graticule lines every this many degrees.
GRATICULE_STEP = 30

# Marker radii, in degrees of longitude (the SVG's units).
REGION_MIN_RADIUS = 1.2
REGION_MAX_RADIUS = 5.0
REPLICA_MIN_RADIUS = 0.7
REPLICA_MAX_RADIUS = 2.4

# Region health shown on the dashboard map, worst first.
DOWN = "down"
DEGRADED = "degraded"
EMPTY = "empty"
HEALTHY = "healthy"
HEALTH_LABELS = {
    HEALTHY: "healthy: every cluster answers",
    DEGRADED: "degraded: some clusters suspect or down",
    DOWN: "down: every cluster lost",
    EMPTY: "empty: no GPU capacity",
}


def project(latitude: float, longitude: float) -> tuple[float, float]:
    """Return the SVG point (x, y) of a coordinate in decimal degrees."""
    return round(longitude + 180.0, 2), round(90.0 - latitude, 2)


def decode_arcs(topology: dict) -> list[list[tuple[float, float]]]:
    """Return the topology's arcs as (longitude, latitude) points.

    Quantized TopoJSON stores each arc's first position as integers and every later one as the
    difference from the previous position. ``transform`` maps integers back to degrees:
    value * scale + translate, per axis.
    """
    transform = topology.get("transform")
    arcs = []
    for arc in topology["arcs"]:
        if transform is None:
            arcs.append([(float(x), float(y)) for x, y, *_ in arc])
            continue
        (scale_x, scale_y), (translate_x, translate_y) = transform["scale"], transform["translate"]
        x = y = 0
        points = []
        for dx, dy, *_ in arc:
            x += dx
            y += dy
            points.append((x * scale_x + translate_x, y * scale_y + translate_y))
        arcs.append(points)
    return arcs


def ring_points(ring: list[int], arcs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Join a ring's arcs into one list of points.

    An arc index ``~i`` (a negative number) means arc ``i`` reversed. Consecutive arcs share their
    end and start point, so each arc after the first drops its first point.
    """
    points: list[tuple[float, float]] = []
    for index in ring:
        arc = arcs[~index][::-1] if index < 0 else arcs[index]
        points.extend(arc[1:] if points else arc)
    return points


def geometry_rings(geometry: dict) -> list[list[int]]:
    """Return the rings (lists of arc indexes) of a Polygon, a MultiPolygon or a collection of them."""
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        return [ring for child in geometry["geometries"] for ring in geometry_rings(child)]
    if kind == "Polygon":
        return list(geometry["arcs"])
    if kind == "MultiPolygon":
        return [ring for polygon in geometry["arcs"] for ring in polygon]
    return []


def unwrap(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the ring with longitudes made continuous across the antimeridian.

    The data is spherical, as d3-geo expects: a ring that crosses 180 degrees jumps from +180 to
    -180, which a flat map would draw as a line across the world. Each point moves by 360 degrees
    when that brings it within 180 degrees of the previous point, so the ring may extend past
    -180 or +180. A ring around a pole (Antarctica) then ends 360 degrees from where it started,
    and is closed along the pole.
    """
    result: list[tuple[float, float]] = []
    for longitude, latitude in points:
        if result:
            previous = result[-1][0]
            while longitude - previous > 180:
                longitude -= 360
            while previous - longitude > 180:
                longitude += 360
        result.append((longitude, latitude))
    if result and abs(result[-1][0] - result[0][0]) > 180:
        pole = -90.0 if sum(latitude for _, latitude in result) < 0 else 90.0
        result += [(result[-1][0], pole), (result[0][0], pole)]
    return result


def ring_path(points: list[tuple[float, float]]) -> str:
    """Return SVG paths of one closed ring, in one-decimal units (0.1 degree, about 11 km).

    A ring that extends past the antimeridian is drawn twice, shifted by 360 degrees, and the
    SVG viewport clips each copy to the part of the world it covers.
    """
    points = unwrap(points)
    if len(points) < 3:
        return ""
    west = min(longitude for longitude, _ in points)
    east = max(longitude for longitude, _ in points)
    shifts = [0.0]
    if west < -180:
        shifts.append(360.0)
    if east > 180:
        shifts.append(-360.0)
    paths = []
    for shift in shifts:
        steps = []
        previous = ""
        for longitude, latitude in points:
            point = f"{longitude + shift + 180.0:.1f},{90.0 - latitude:.1f}"
            if point != previous:
                steps.append(("M" if not steps else "L") + point)
            previous = point
        paths.append("".join(steps) + "Z")
    return "".join(paths)


@cache
def land_path() -> str:
    """Return the land of ``LAND_FILE`` within the shown latitudes as one SVG path, decoded once per process.

    Holes (the Caspian Sea, for one) are rings of the same path, so the path needs ``fill-rule: evenodd``.
    """
    topology = json.loads(LAND_FILE.read_text())
    arcs = decode_arcs(topology)
    paths = []
    for ring in geometry_rings(topology["objects"]["land"]):
        points = ring_points(ring, arcs)
        # Rings wholly outside the shown latitudes (Antarctica) would only add bytes to every page.
        if any(SOUTH_LAT <= latitude <= NORTH_LAT for _, latitude in points):
            paths.append(ring_path(points))
    return "".join(paths)


def graticule_path() -> str:
    """Return meridians and parallels every ``GRATICULE_STEP`` degrees as one SVG path."""
    steps = []
    for longitude in range(-180, 181, GRATICULE_STEP):
        x = longitude + 180
        steps.append(f"M{x},{90 - NORTH_LAT:g}V{90 - SOUTH_LAT:g}")
    for latitude in range(-60, 90, GRATICULE_STEP):
        if SOUTH_LAT <= latitude <= NORTH_LAT:
            steps.append(f"M0,{90 - latitude}H360")
    return "".join(steps)


def map_context() -> dict:
    """Return what a page with a world map needs: the land and graticule paths, the view box and the health legend."""
    return {
        "land_path": land_path(),
        "graticule_path": graticule_path(),
        "map_viewbox": VIEWBOX,
        "health_labels": HEALTH_LABELS,
    }


def fit_viewbox(
    points: list[tuple[float, float]], *, padding: float = 8.0, min_width: float = 60.0
) -> tuple[str, float]:
    """Return a view box around SVG points, with the world map's aspect ratio, and its zoom (width / 360).

    ``padding`` and ``min_width`` are in degrees, so one region alone still shows its surroundings.
    Without points, or when the points need more than the shown world, returns ``VIEWBOX`` and 1.
    Markers sized for the whole world keep their size on screen when multiplied by the zoom.
    """
    if not points:
        return VIEWBOX, 1.0
    aspect = (NORTH_LAT - SOUTH_LAT) / 360.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    left, right = min(xs) - padding, max(xs) + padding
    top, bottom = min(ys) - padding, max(ys) + padding
    width = max(right - left, (bottom - top) / aspect, min_width)
    if width >= 360.0:
        return VIEWBOX, 1.0
    height = width * aspect
    world_top, world_bottom = 90.0 - NORTH_LAT, 90.0 - SOUTH_LAT
    x = min(max((left + right - width) / 2, 0.0), 360.0 - width)
    y = min(max((top + bottom - height) / 2, world_top), world_bottom - height)
    return f"{x:.2f} {y:.2f} {width:.2f} {height:.2f}", width / 360.0


def scaled_radius(value: float, largest: float, smallest_radius: float, largest_radius: float) -> float:
    """Return a marker radius whose area grows linearly with ``value`` (a square-root scale).

    ``largest`` gets ``largest_radius``, and 0 gets ``smallest_radius`` so that an empty marker stays visible.
    """
    if largest <= 0 or value <= 0:
        return smallest_radius
    share = math.sqrt(min(value, largest) / largest)
    return round(smallest_radius + (largest_radius - smallest_radius) * share, 2)


def region_place(region) -> dict:
    """Return a ``fleet.models.Region``'s map key ("provider/code"), tooltip label and coordinates."""
    return {
        "key": str(region),
        "label": region.city or region.display_name or region.code,
        "latitude": region.latitude,
        "longitude": region.longitude,
    }


@dataclass(frozen=True)
class RegionInput:
    """A region to draw, with the health of its clusters and what runs there."""

    key: str  # "provider/code"
    label: str  # city or region name, for the tooltip
    latitude: float | None
    longitude: float | None
    clusters: int
    lost_clusters: int  # down, or under an open outage
    suspect_clusters: int
    gpus: int
    replicas: int


@dataclass(frozen=True)
class RegionMarker:
    """A region's circle on the map: position, radius and health, plus its placed replicas."""

    key: str
    label: str
    x: float
    y: float
    radius: float
    health: str
    gpus: int
    clusters: int
    replicas: int
    replica_radius: float

    @property
    def title(self) -> str:
        replicas = f", {self.replicas} replicas placed" if self.replicas else ""
        return f"{self.key} ({self.label}): {self.health}, {self.clusters} clusters, {self.gpus} GPUs{replicas}"


def count_lost_and_suspect(clusters: list, states: list) -> tuple[int, int]:
    """Count the lost clusters, and the suspect ones among the rest.

    ``states`` are the clusters' ``fleet.availability.Availability``, in the same order.
    """
    lost = sum(1 for state in states if state.lost)
    suspect = sum(
        1
        for cluster, state in zip(clusters, states, strict=True)
        if not state.lost and cluster.health == ClusterHealth.SUSPECT
    )
    return lost, suspect


def clusters_health(clusters: int, lost: int, suspect: int) -> str:
    """Return the health of a group of clusters: down when every one is lost, degraded when some are lost or suspect."""
    if clusters and lost >= clusters:
        return DOWN
    if lost or suspect:
        return DEGRADED
    return HEALTHY


def region_health(region: RegionInput) -> str:
    """Return the map's health of a region: its clusters' health, or empty when it has no GPUs but all answer."""
    health = clusters_health(region.clusters, region.lost_clusters, region.suspect_clusters)
    if health == HEALTHY and region.gpus <= 0:
        return EMPTY
    return health


@dataclass(frozen=True)
class RegionMap:
    """The dashboard map's markers, largest first so that small circles are drawn on top."""

    markers: list[RegionMarker]
    unplaced: list[str]  # regions without coordinates, left off the map
    largest_gpus: int
    largest_replicas: int


def region_map(regions: list[RegionInput]) -> RegionMap:
    """Place the regions that have clusters on the map, and list those without coordinates in ``unplaced``."""
    drawn = [region for region in regions if region.clusters]
    placed = [region for region in drawn if region.latitude is not None and region.longitude is not None]
    unplaced = sorted(region.key for region in drawn if region not in placed)
    largest_gpus = max((region.gpus for region in placed), default=0)
    largest_replicas = max((region.replicas for region in placed), default=0)
    markers = []
    for region in placed:
        x, y = project(region.latitude, region.longitude)  # type: ignore[arg-type]
        markers.append(
            RegionMarker(
                key=region.key,
                label=region.label,
                x=x,
                y=y,
                radius=scaled_radius(region.gpus, largest_gpus, REGION_MIN_RADIUS, REGION_MAX_RADIUS),
                health=region_health(region),
                gpus=region.gpus,
                clusters=region.clusters,
                replicas=region.replicas,
                replica_radius=scaled_radius(region.replicas, largest_replicas, REPLICA_MIN_RADIUS, REPLICA_MAX_RADIUS),
            )
        )
    markers.sort(key=lambda marker: (-marker.radius, marker.key))
    return RegionMap(markers, unplaced, largest_gpus, largest_replicas)
