"""Great-circle distance and an estimate of network round-trip time between two points."""

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)

# Round-trip time estimate: RTT_ms = RTT_BASE_MS + 2 * distance_km * ROUTE_FACTOR / FIBRE_KM_PER_MS.
# Light in fibre covers about 200 km per ms, and real routes are about 1.5x longer than the great
# circle. The 5 ms base covers last-mile, switching and TLS termination. 1,000 km gives 20 ms and
# a transatlantic 5,600 km gives about 89 ms. NOTE: an estimate from geography only, not a
# measurement; telemetry of real RTTs would replace it.
RTT_BASE_MS = 5.0
FIBRE_KM_PER_MS = 200.0
ROUTE_FACTOR = 1.5


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Return the great-circle distance in km between two points given in degrees."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def haversine_km_array(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Return the great-circle distances in km from one point to arrays of points, all in degrees."""
    phi1 = math.radians(lat)
    phi2 = np.radians(lats)
    dphi = phi2 - phi1
    dlambda = np.radians(lons - lon)
    a = np.sin(dphi / 2) ** 2 + math.cos(phi1) * np.cos(phi2) * np.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def estimate_rtt_ms(distance_km):
    """Return the estimated round-trip time in ms for a distance in km (a float or a numpy array)."""
    return RTT_BASE_MS + 2.0 * distance_km * ROUTE_FACTOR / FIBRE_KM_PER_MS
