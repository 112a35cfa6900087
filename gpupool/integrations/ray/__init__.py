"""gpupool on a Ray cluster: :class:`RayCluster` (the extra ``ray``: ``pip install 'gpupool[ray]'``).

``ParallelRunner(RayCluster(...))`` runs a sweep on every node of a Ray
cluster with gpupool's GPU semantics on each node; docs/ray.md.
"""

from __future__ import annotations

try:
    import ray as _ray  # noqa: F401  (only to fail here, with the hint, when it is missing)
except ImportError as error:  # pragma: no cover - the extra's absence is tested in a subprocess
    raise ImportError("gpupool.integrations.ray needs Ray: pip install 'gpupool[ray]'") from error

from .cluster import RayCluster

__all__ = ["RayCluster"]
