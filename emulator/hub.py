"""A control server for many emulated clusters, reachable even while one of them is unreachable.

`GET /clusters` lists names, URLs and faults. `GET`, `POST` and `DELETE` on
`/clusters/<name>/faults` read, set and clear one cluster's faults. They take the same JSON body as
a cluster's own `/_emulator/faults`. `/clusters/<name>/traffic` does the same for the cluster's
traffic, with the body of `/_emulator/traffic`.
"""

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from emulator.cluster import EmulatedCluster
from emulator.objects import ApiError
from emulator.server import ClusterServer

logger = logging.getLogger(__name__)

_CLUSTER_CONTROL = re.compile(r"^/clusters/(?P<name>[^/]+)/(?P<control>faults|traffic)/?$")


class HubHandler(BaseHTTPRequestHandler):
    """Serve the control routes; `clusters` is set on a subclass made by `start_hub`."""

    clusters: dict[str, EmulatedCluster]
    wbufsize = 64 * 1024

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("hub %s: %s", self.address_string(), format % args)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        cluster = None
        try:
            status, payload, cluster = self._dispatch(raw_body)
        except ApiError as error:
            status, payload = error.code, error.status()
        except json.JSONDecodeError as error:
            status, payload = 400, ApiError(400, "BadRequest", f"the request body is not valid JSON: {error}").status()
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        if cluster is not None:
            cluster.apply_pending_reachability()

    def _dispatch(self, raw_body: bytes) -> tuple[int, Any, EmulatedCluster | None]:
        path = self.path.split("?", 1)[0]
        if path.rstrip("/") == "/clusters" and self.command == "GET":
            listing = [{"name": c.name, "url": c.url, "faults": c.faults()} for c in self.clusters.values()]
            return 200, {"clusters": listing}, None
        match = _CLUSTER_CONTROL.match(path)
        if not match:
            raise ApiError(404, "NotFound", f"no route {self.command} {path}; see GET /clusters")
        cluster = self.clusters.get(match["name"])
        if cluster is None:
            raise ApiError(404, "NotFound", f"cluster {match['name']!r} not found; see GET /clusters")
        if match["control"] == "traffic":
            return self._traffic(cluster, raw_body)
        if self.command == "GET":
            return 200, cluster.faults(), None
        if self.command == "DELETE":
            return 200, cluster.clear_faults(), None
        body = json.loads(raw_body) if raw_body.strip() else {}
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object of fault settings")
        return 200, cluster.apply_faults(body), cluster

    def _traffic(self, cluster: EmulatedCluster, raw_body: bytes) -> tuple[int, Any, None]:
        if self.command == "GET":
            return 200, cluster.traffic.as_dict(), None
        if self.command == "DELETE":
            return 200, cluster.clear_traffic(), None
        body = json.loads(raw_body) if raw_body.strip() else {}
        return 200, cluster.traffic.apply_request(body), None


def start_hub(clusters: list[EmulatedCluster], port: int = 0) -> ClusterServer:
    """Serve the control routes for `clusters` on 127.0.0.1:`port` in a daemon thread."""
    handler = type("HubHandlerBound", (HubHandler,), {"clusters": {cluster.name: cluster for cluster in clusters}})
    server = ClusterServer(("127.0.0.1", port), handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="emulator-hub", daemon=True
    ).start()
    return server
