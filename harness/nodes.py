"""Where a run's trials ran: the node of the calling process (trial side) and every node of the
Ray cluster (driver side).

A trial records its own placement (host name, node IP, Ray node id, device, GPU model, CPU
threads) because only the trial knows it: the driver sees a Tune trial's actor, and with several
Ray Train workers per trial the actor is not even where the training runs.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

NODE_KEYS = ("hostname", "node_ip", "node_id")


def this_node() -> dict[str, str | None]:
    """``{hostname, node_ip, node_id}`` of this process; IP and id from Ray when it runs in
    (or is connected to) a Ray cluster, else the IP its host name resolves to and no id."""
    where: dict[str, str | None] = {"hostname": socket.gethostname(), "node_ip": None}
    where["node_id"] = None
    with contextlib.suppress(Exception):  # Ray absent or not initialised: plain host facts
        import ray

        if ray.is_initialized():
            where["node_id"] = ray.get_runtime_context().get_node_id()
            where["node_ip"] = ray.util.get_node_ip_address()
    if not where["node_ip"]:
        with contextlib.suppress(OSError):
            where["node_ip"] = socket.gethostbyname(where["hostname"] or "")
    return where


def trial_placement(device: Any, collective: Any = None) -> dict[str, Any]:
    """What a trial's summary records about where it ran. ``device``: the trial's
    ``torch.device``; ``collective``: with several workers, every rank must call this (the
    ranks' host names are gathered), and the result is rank 0's node plus ``worker_hosts``."""
    import torch

    placement: dict[str, Any] = {
        **this_node(),
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "worker_hosts": None,
    }
    world = getattr(collective, "world_size", 1)
    if world > 1:
        import torch.distributed as dist

        hosts: list[Any] = [None] * world
        dist.all_gather_object(hosts, placement["hostname"])
        placement["worker_hosts"] = ", ".join(str(h) for h in hosts)
    return placement


def _gpu_model(resources: dict[str, float]) -> str | None:
    """Ray's ``accelerator_type:<model>`` resource, where Ray detected one."""
    for key in resources:
        if key.startswith("accelerator_type:"):
            return key.partition(":")[2]
    return None


def cluster_nodes(driver_gpus: list[str] | None = None) -> list[dict[str, Any]]:
    """Every alive node of the connected Ray cluster: host name, IP, Ray node id, CPUs, GPUs,
    GPU model (Ray's accelerator type, or ``driver_gpus`` for the driver's own node) and the
    memory Ray may use on it (GiB). Empty when Ray cannot say."""
    import ray

    try:
        nodes = ray.nodes()
        driver_node = ray.get_runtime_context().get_node_id()
    except Exception:
        return []
    out = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        gpu_model = _gpu_model(resources)
        if node.get("NodeID") == driver_node and driver_gpus and resources.get("GPU"):
            gpu_model = driver_gpus[0]
        out.append(
            {
                "hostname": node.get("NodeManagerHostname"),
                "node_ip": node.get("NodeManagerAddress"),
                "node_id": node.get("NodeID"),
                "cpus": resources.get("CPU", 0.0),
                "gpus": resources.get("GPU", 0.0),
                "gpu_model": gpu_model,
                "memory_gb": round(resources.get("memory", 0.0) / 2**30, 1),
                "driver": node.get("NodeID") == driver_node,
            }
        )
    return out


def merge_nodes(known: list[dict[str, Any]], seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``known`` nodes (by node id, else host and IP), updated and extended by ``seen``."""

    def key(node: dict[str, Any]) -> tuple:
        if node.get("node_id"):
            return (node["node_id"],)
        return (node.get("hostname"), node.get("node_ip"))

    merged: dict[tuple, dict[str, Any]] = {}
    for node in [*known, *seen]:
        merged[key(node)] = {**merged.get(key(node), {}), **node}
    return list(merged.values())
