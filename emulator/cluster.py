"""One emulated Kubernetes cluster: its HTTP listener, its state and its fault switches."""

import logging
import random
import socket
import threading
import time
from typing import Any, Self

from emulator.objects import ApiError
from emulator.server import ClusterServer, start_server
from emulator.store import ClusterState
from emulator.traffic import OriginTraffic, TrafficTable

logger = logging.getLogger(__name__)

_ERROR_REASONS = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "Timeout"}
FAULT_KEYS = (
    "unreachable",
    "slow_s",
    "error_rate",
    "error_status",
    "error_seed",
    "never_ready",
    "capacity_lost",
    "ready_delay_s",
)


class EmulatedCluster:
    """A Kubernetes API server on 127.0.0.1 with GPU nodes and a Deployment controller.

    `nodes` is a list of `(node_name, gpu_product_label, gpu_count)`. Pods become ready
    `ready_delay_s` seconds after they are scheduled. When `token` is set, every request must
    carry `Authorization: Bearer <token>`, or it gets 401.
    """

    def __init__(
        self,
        name: str,
        nodes: list[tuple[str, str, int]],
        ready_delay_s: float = 1.0,
        token: str | None = None,
        port: int = 0,
    ):
        self.name = name
        self.token = token
        self.state = ClusterState(nodes, ready_delay_s)
        self.traffic = TrafficTable()
        self._port = port
        self._server: ClusterServer | None = None
        self._lifecycle_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

        self._fault_lock = threading.Lock()
        self._unreachable = False
        self._pending_unreachable: bool | None = None
        self._slow_s = 0.0
        self._error_rate = 0.0
        self._error_status = 503
        self._random = random.Random(0)

    def __repr__(self) -> str:
        return f"EmulatedCluster({self.name!r}, port={self._port})"

    # Lifecycle

    def start(self) -> Self:
        """Start serving on 127.0.0.1 in a background thread; the first start picks a free port."""
        with self._lifecycle_lock:
            if self._server is None and not self._unreachable:
                self._open_listener()
                logger.info("emulated cluster %s listening on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        """Stop the listener and close open connections; `start()` serves again on the same port."""
        with self._lifecycle_lock:
            self._close_listener()
            self._unreachable = False
        logger.info("emulated cluster %s stopped", self.name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"emulated cluster {self.name} has not been started; call start() first")
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _open_listener(self) -> None:
        try:
            self._server, _ = start_server(self, self._port)
        except OSError as error:
            raise RuntimeError(f"emulated cluster {self.name} cannot bind 127.0.0.1:{self._port}: {error}") from error
        self._port = self._server.server_address[1]

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def track_connection(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack_connection(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    # Faults

    @property
    def is_unreachable(self) -> bool:
        return self._unreachable

    @property
    def ready_delay_s(self) -> float:
        return self.state.controller.ready_delay_s

    @ready_delay_s.setter
    def ready_delay_s(self, seconds: float) -> None:
        with self.state.lock:
            self.state.controller.ready_delay_s = seconds

    def set_unreachable(self, unreachable: bool = True) -> None:
        """Close the listener and open connections (clients get connection refused), or reopen it.

        The state is kept and the listener comes back on the same port.
        """
        with self._lifecycle_lock:
            if unreachable and not self._unreachable:
                self._unreachable = True
                self._close_listener()
                logger.info("emulated cluster %s is unreachable", self.name)
            elif not unreachable and self._unreachable:
                self._open_listener()
                self._unreachable = False
                logger.info("emulated cluster %s is reachable again on %s", self.name, self.url)

    def set_slow(self, seconds: float) -> None:
        """Delay every API request by `seconds` before it is handled; 0 turns the delay off."""
        if seconds < 0:
            raise ValueError(f"slow_s must be 0 or more seconds, got {seconds}")
        self._slow_s = float(seconds)

    def set_errors(self, rate: float, status: int = 503, seed: int = 0) -> None:
        """Fail a `rate` fraction (0 to 1) of API requests with `status` (500-504), drawn from `seed`."""
        if not 0 <= rate <= 1:
            raise ValueError(f"error_rate must be between 0 and 1, got {rate}")
        if status not in _ERROR_REASONS:
            raise ValueError(f"error_status must be one of {sorted(_ERROR_REASONS)}, got {status}")
        with self._fault_lock:
            self._error_rate = float(rate)
            self._error_status = status
            self._random = random.Random(seed)

    def lose_capacity(self, node_name: str, gpus: int | None = None) -> None:
        """Remove `gpus` GPUs (None: all of them) from a node; pods that no longer fit become pending."""
        with self.state.lock:
            node = self.state.nodes.get(node_name)
            if node is None:
                raise ValueError(
                    f"node {node_name!r} not found in cluster {self.name}; nodes: {sorted(self.state.nodes)}"
                )
            node.gpus_lost = node.gpus if gpus is None else min(max(gpus, 0), node.gpus)
            self.state.mark_changed([node_name])

    def restore_capacity(self, node_name: str | None = None) -> None:
        """Give back the GPUs that `lose_capacity` removed from one node, or from all nodes."""
        with self.state.lock:
            names = [node_name] if node_name else list(self.state.nodes)
            for name in names:
                if name not in self.state.nodes:
                    raise ValueError(f"node {name!r} not found in cluster {self.name}")
                self.state.nodes[name].gpus_lost = 0
            self.state.mark_changed(names)

    def set_never_ready(self, never_ready: bool = True) -> None:
        """Keep pods that are not ready yet from becoming ready; ready pods stay ready."""
        self.state.reconcile()
        with self.state.lock:
            self.state.never_ready = never_ready
            self.state.mark_changed()

    def clear_faults(self) -> dict:
        """Switch every fault off and return the fault settings."""
        self.set_slow(0)
        self.set_errors(0)
        self.set_never_ready(False)
        self.restore_capacity()
        self.set_unreachable(False)
        return self.faults()

    # Traffic

    def set_traffic(self, deployment: str, by_origin: OriginTraffic, namespace: str = "mcm") -> None:
        """Report `deployment`'s traffic as origin -> (requests per second, in-flight or None) from now on.

        Replaces what was set for the Deployment before; an empty `by_origin` removes it. The values
        are served through the custom metrics API until they are changed or cleared.
        """
        self.traffic.set(namespace, deployment, by_origin)

    def clear_traffic(self) -> dict:
        """Remove every Deployment's traffic and return the (empty) traffic table."""
        self.traffic.clear()
        return self.traffic.as_dict()

    def faults(self) -> dict:
        with self.state.lock:
            capacity_lost = {node.name: node.gpus_lost for node in self.state.nodes.values() if node.gpus_lost}
            never_ready = self.state.never_ready
        return {
            "unreachable": self._unreachable,
            "slow_s": self._slow_s,
            "error_rate": self._error_rate,
            "error_status": self._error_status,
            "never_ready": never_ready,
            "capacity_lost": capacity_lost,
            "ready_delay_s": self.ready_delay_s,
        }

    def apply_faults(self, settings: dict) -> dict:
        """Apply the fault settings named in `settings` (the body of `POST /_emulator/faults`).

        `unreachable` takes effect after the response is sent, through `apply_pending_reachability`.
        """
        unknown = sorted(set(settings) - set(FAULT_KEYS))
        if unknown:
            raise ApiError(400, "BadRequest", f"unknown fault settings {unknown}; known: {list(FAULT_KEYS)}")
        try:
            self._apply_fault_settings(settings)
        except (TypeError, ValueError) as error:
            raise ApiError(400, "BadRequest", f"invalid fault setting: {error}") from None
        result = self.faults()
        if self._pending_unreachable is not None:
            result["unreachable"] = self._pending_unreachable
        return result

    def _apply_fault_settings(self, settings: dict[str, Any]) -> None:
        if "slow_s" in settings:
            self.set_slow(float(settings["slow_s"]))
        if "error_rate" in settings or "error_status" in settings or "error_seed" in settings:
            self.set_errors(
                float(settings.get("error_rate", self._error_rate)),
                int(settings.get("error_status", self._error_status)),
                int(settings.get("error_seed", 0)),
            )
        if "never_ready" in settings:
            self.set_never_ready(bool(settings["never_ready"]))
        if "ready_delay_s" in settings:
            self.ready_delay_s = float(settings["ready_delay_s"])
        for node_name, gpus in (settings.get("capacity_lost") or {}).items():
            self.lose_capacity(node_name, None if gpus is None else int(gpus))
        if "unreachable" in settings:
            self._pending_unreachable = bool(settings["unreachable"])

    def apply_pending_reachability(self) -> None:
        """Carry out an `unreachable` setting received over HTTP, once its response is sent."""
        pending, self._pending_unreachable = self._pending_unreachable, None
        if pending is not None:
            self.set_unreachable(pending)

    def apply_request_faults(self) -> None:
        """Delay or fail one API request as the `slow` and `errors` faults ask."""
        if self._slow_s:
            time.sleep(self._slow_s)
        if not self._error_rate:
            return
        with self._fault_lock:
            failed = self._random.random() < self._error_rate
            status = self._error_status
        if failed:
            raise ApiError(
                status, _ERROR_REASONS[status], f"injected fault: emulated cluster {self.name} failed this request"
            )
