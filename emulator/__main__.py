"""Run emulated clusters until interrupted: `python -m emulator --clusters 3`.

Prints one JSON line per cluster (name, URL, nodes) and the URL of the control hub, then serves
until Ctrl-C or SIGTERM.
"""

import argparse
import json
import logging
import signal
import threading

from emulator import gpu_nodes, start_clusters
from emulator.hub import start_hub

DEFAULT_SKUS = "NVIDIA-H100-80GB-HBM3,NVIDIA-A100-SXM4-80GB,NVIDIA-L4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulator", description="Serve emulated GPU Kubernetes clusters on 127.0.0.1."
    )
    parser.add_argument("--clusters", type=int, default=3, help="number of clusters to start (default: 3)")
    parser.add_argument(
        "--name-prefix", default="emu", help="cluster names are <prefix>-0, <prefix>-1, ... (default: emu)"
    )
    parser.add_argument("--nodes", type=int, default=4, help="nodes per cluster (default: 4)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs on each node (default: 8)")
    parser.add_argument(
        "--skus",
        default=DEFAULT_SKUS,
        help="comma-separated GPU product labels; cluster i gets the i-th, cycling (default: %(default)s)",
    )
    parser.add_argument("--ready-delay", type=float, default=2.0, help="seconds from scheduling to ready (default: 2)")
    parser.add_argument("--token", default=None, help="bearer token that every cluster requires (default: none)")
    parser.add_argument("--hub-port", type=int, default=0, help="port of the control hub (default: a free port)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    skus = [sku.strip() for sku in args.skus.split(",") if sku.strip()]
    specs = []
    for index in range(args.clusters):
        name = f"{args.name_prefix}-{index}"
        nodes = gpu_nodes(f"{name}-node", skus[index % len(skus)], args.nodes, args.gpus_per_node)
        specs.append({"name": name, "nodes": nodes, "ready_delay_s": args.ready_delay, "token": args.token})
    clusters = start_clusters(specs)
    hub = start_hub(clusters, args.hub_port)

    for cluster, spec in zip(clusters, specs, strict=True):
        print(json.dumps({"name": cluster.name, "url": cluster.url, "nodes": spec["nodes"]}), flush=True)  # noqa: T201
    print(json.dumps({"hub": f"http://127.0.0.1:{hub.server_address[1]}"}), flush=True)  # noqa: T201

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    hub.shutdown()
    for cluster in clusters:
        cluster.stop()


if __name__ == "__main__":
    main()
