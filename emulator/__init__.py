"""Emulated Kubernetes clusters with GPU nodes, for MCM's tests and demo.

Each `EmulatedCluster` serves the part of the Kubernetes API that MCM uses on 127.0.0.1: Nodes,
and apps/v1 Deployments with their scale and status subresources. Its controller makes Deployment
replicas ready as free GPUs allow, and its fault modes can be switched at run time.
MCM's product code never imports this package.
"""

from emulator.cluster import EmulatedCluster


def gpu_nodes(prefix: str, sku: str, count: int, gpus_per_node: int = 8) -> list[tuple[str, str, int]]:
    """Return `count` node specs named `<prefix>-0`, `<prefix>-1`, ... with one GPU product each."""
    return [(f"{prefix}-{index}", sku, gpus_per_node) for index in range(count)]


def start_clusters(specs: list[dict]) -> list[EmulatedCluster]:
    """Start one cluster per spec; a spec contains the keyword arguments of `EmulatedCluster`.

    If one cluster fails to start, the ones already started are stopped before the error is raised.
    """
    clusters: list[EmulatedCluster] = []
    try:
        for spec in specs:
            clusters.append(EmulatedCluster(**spec).start())
    except Exception:
        for cluster in clusters:
            cluster.stop()
        raise
    return clusters


__all__ = ["EmulatedCluster", "gpu_nodes", "start_clusters"]
