"""HTTP handling: routes of the Kubernetes API subset, bearer-token auth and request faults."""

import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from emulator import discovery, traffic
from emulator.objects import ApiError

if TYPE_CHECKING:
    from emulator.cluster import EmulatedCluster

logger = logging.getLogger(__name__)

DEPLOYMENTS = "/apis/apps/v1/namespaces/(?P<namespace>[^/]+)/deployments"
DEPLOYMENT = DEPLOYMENTS + "/(?P<name>[^/]+)"
CUSTOM_METRICS = f"/apis/{traffic.GROUP}/{traffic.VERSION}"
CUSTOM_METRIC = (
    CUSTOM_METRICS + "/namespaces/(?P<namespace>[^/]+)/(?P<resource>[^/]+)/(?P<name>[^/]+)/(?P<metric>[^/]+)"
)


class Request:
    """One parsed API request: path parameters, query parameters, body and content type."""

    def __init__(self, params: dict[str, str], query: dict[str, str], body: Any, content_type: str):
        self.params = params
        self.query = query
        self.body = body
        self.content_type = content_type

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"

    def object_body(self) -> dict:
        if not isinstance(self.body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        return self.body


Route = tuple[str, re.Pattern, Callable[["EmulatedCluster", Request], tuple[int, Any]]]


def _routes() -> list[Route]:
    def ns_name(request: Request) -> tuple[str, str]:
        return request.params["namespace"], request.params["name"]

    table: list[tuple[str, str, Callable[[EmulatedCluster, Request], tuple[int, Any]]]] = [
        ("GET", "/version", lambda c, r: (200, discovery.version())),
        ("GET", "/api", lambda c, r: (200, discovery.core_versions(c.address))),
        ("GET", "/api/v1", lambda c, r: (200, discovery.CORE_RESOURCES)),
        ("GET", "/apis", lambda c, r: (200, discovery.GROUPS)),
        ("GET", "/apis/apps", lambda c, r: (200, discovery.APPS_GROUP)),
        ("GET", "/apis/apps/v1", lambda c, r: (200, discovery.APPS_RESOURCES)),
        ("GET", f"/apis/{traffic.GROUP}", lambda c, r: (200, discovery.CUSTOM_METRICS_GROUP)),
        ("GET", CUSTOM_METRICS, lambda c, r: (200, discovery.CUSTOM_METRICS_RESOURCES)),
        ("GET", CUSTOM_METRIC, lambda c, r: (200, _metric_values(c, r))),
        ("GET", "/(healthz|readyz|livez)", lambda c, r: (200, "ok")),
        (
            "GET",
            "/api/v1/nodes",
            lambda c, r: (200, c.state.list_nodes(r.query.get("labelSelector"), r.query.get("fieldSelector"))),
        ),
        ("GET", "/api/v1/nodes/(?P<name>[^/]+)", lambda c, r: (200, c.state.get_node(r.params["name"]))),
        ("GET", "/api/v1/namespaces", lambda c, r: (200, c.state.list_namespaces())),
        ("POST", "/api/v1/namespaces", lambda c, r: (201, c.state.create_namespace(r.object_body()))),
        ("GET", "/api/v1/namespaces/(?P<name>[^/]+)", lambda c, r: (200, c.state.get_namespace(r.params["name"]))),
        ("GET", "/apis/apps/v1/deployments", lambda c, r: (200, _list_deployments(c, r, None))),
        ("GET", DEPLOYMENTS, lambda c, r: (200, _list_deployments(c, r, r.params["namespace"]))),
        (
            "POST",
            DEPLOYMENTS,
            lambda c, r: (201, c.state.create_deployment(r.params["namespace"], r.object_body(), r.dry_run)),
        ),
        ("GET", DEPLOYMENT, lambda c, r: (200, c.state.get_deployment(*ns_name(r)))),
        ("PUT", DEPLOYMENT, lambda c, r: (200, c.state.replace_deployment(*ns_name(r), r.object_body(), r.dry_run))),
        (
            "PATCH",
            DEPLOYMENT,
            lambda c, r: (200, c.state.patch_deployment(*ns_name(r), r.body, r.content_type, r.dry_run)),
        ),
        (
            "DELETE",
            DEPLOYMENT,
            lambda c, r: (200, c.state.delete_deployment(*ns_name(r), r.body if isinstance(r.body, dict) else None)),
        ),
        ("GET", DEPLOYMENT + "/scale", lambda c, r: (200, c.state.get_scale(*ns_name(r)))),
        (
            "PUT",
            DEPLOYMENT + "/scale",
            lambda c, r: (200, c.state.update_scale(*ns_name(r), r.object_body(), None, r.dry_run)),
        ),
        (
            "PATCH",
            DEPLOYMENT + "/scale",
            lambda c, r: (200, c.state.update_scale(*ns_name(r), r.body, r.content_type, r.dry_run)),
        ),
        ("GET", DEPLOYMENT + "/status", lambda c, r: (200, c.state.get_deployment(*ns_name(r)))),
        (
            "PUT",
            DEPLOYMENT + "/status",
            lambda c, r: (200, c.state.update_status(*ns_name(r), r.object_body(), None, r.dry_run)),
        ),
        (
            "PATCH",
            DEPLOYMENT + "/status",
            lambda c, r: (200, c.state.update_status(*ns_name(r), r.body, r.content_type, r.dry_run)),
        ),
        ("GET", "/_emulator/faults", lambda c, r: (200, c.faults())),
        ("POST", "/_emulator/faults", lambda c, r: (200, c.apply_faults(r.object_body()))),
        ("DELETE", "/_emulator/faults", lambda c, r: (200, c.clear_faults())),
        ("GET", "/_emulator/traffic", lambda c, r: (200, c.traffic.as_dict())),
        ("POST", "/_emulator/traffic", lambda c, r: (200, c.traffic.apply_request(r.body))),
        ("DELETE", "/_emulator/traffic", lambda c, r: (200, c.clear_traffic())),
    ]
    return [(method, re.compile(f"^{pattern}/?$"), handler) for method, pattern, handler in table]


def _metric_values(cluster: "EmulatedCluster", request: Request) -> dict:
    params = request.params
    return cluster.traffic.metric_values(
        params["namespace"],
        params["resource"],
        params["name"],
        params["metric"],
        request.query.get("metricLabelSelector"),
    )


def _list_deployments(cluster: "EmulatedCluster", request: Request, namespace: str | None) -> dict:
    query = request.query
    try:
        limit = int(query.get("limit") or 0)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid limit {query.get('limit')!r}: must be an integer") from None
    return cluster.state.list_deployments(
        namespace, query.get("labelSelector"), query.get("fieldSelector"), limit, query.get("continue")
    )


ROUTES = _routes()


class ApiHandler(BaseHTTPRequestHandler):
    """Serve one connection to an emulated cluster; `cluster` is set on a per-cluster subclass."""

    protocol_version = "HTTP/1.1"
    # Buffer each response and send it as one segment: a header write followed by a body write
    # would meet the client's delayed ACK and cost about 40 ms per request on Linux.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    # Seconds an idle keep-alive connection may hold its thread before the server closes it.
    timeout = 30
    cluster: "EmulatedCluster"

    def setup(self) -> None:
        super().setup()
        self.cluster.track_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.cluster.untrack_connection(self.connection)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s: %s", self.cluster.name, self.address_string(), format % args)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        if self.cluster.is_unreachable:
            self._drop_connection()
            return

        split = urlsplit(self.path)
        path = split.path
        is_control = path.startswith("/_emulator/")
        try:
            self._check_token()
            if not is_control:
                self.cluster.apply_request_faults()
            body = json.loads(raw_body) if raw_body.strip() else None
            request = Request(
                {}, {k: v[-1] for k, v in parse_qs(split.query).items()}, body, self.headers.get("Content-Type", "")
            )
            status, payload = self._dispatch(path, request)
        except ApiError as error:
            logger.debug(
                "%s %s %s failed with %s: %s", self.cluster.name, self.command, path, error.code, error.message
            )
            status, payload = error.code, error.status()
        except json.JSONDecodeError as error:
            status, payload = 400, ApiError(400, "BadRequest", f"the request body is not valid JSON: {error}").status()
        except Exception as error:
            # A body of the wrong shape (for example a string where an object belongs) ends here.
            logger.exception("%s %s %s failed", self.cluster.name, self.command, path)
            status, payload = (
                500,
                ApiError(500, "InternalError", f"the emulator failed on this request: {error}").status(),
            )
        self._respond(status, payload)
        if is_control:
            self.cluster.apply_pending_reachability()

    def _check_token(self) -> None:
        token = self.cluster.token
        if token and self.headers.get("Authorization", "") != f"Bearer {token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _dispatch(self, path: str, request: Request) -> tuple[int, Any]:
        if request.query.get("watch") in ("true", "1"):
            raise ApiError(405, "MethodNotAllowed", "watch is not supported by the emulator; poll with list instead")
        path_matched = False
        for method, pattern, handler in ROUTES:
            match = pattern.match(path)
            if not match:
                continue
            path_matched = True
            if method == self.command:
                request.params = match.groupdict()
                return handler(self.cluster, request)
        if path_matched:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource: {self.command} {path}",
            )
        raise ApiError(404, "NotFound", f"the server could not find the requested resource: {path}")

    def _respond(self, status: int, payload: Any) -> None:
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up first, for example on its own time-out during the `slow` fault.
            logger.debug("client of %s closed the connection before the response was sent", self.cluster.name)
            self.close_connection = True

    def _drop_connection(self) -> None:
        """Close the socket without a response, as a host that went away mid-connection does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ClusterServer(ThreadingHTTPServer):
    """A threaded HTTP server whose threads do not keep the process alive or delay `stop()`."""

    daemon_threads = True
    block_on_close = False


def start_server(cluster: "EmulatedCluster", port: int) -> tuple[ClusterServer, threading.Thread]:
    """Bind 127.0.0.1:`port` (0 picks a free port) and serve `cluster` on a daemon thread."""
    handler = type(f"ApiHandler_{cluster.name}", (ApiHandler,), {"cluster": cluster})
    server = ClusterServer(("127.0.0.1", port), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"emulator-{cluster.name}", daemon=True
    )
    thread.start()
    return server, thread
