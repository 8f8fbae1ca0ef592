"""Connecting a job to Ray: a running cluster, or an instance started inside the job.

Shared by the Ray engines of batch scoring (:mod:`recsys_moe.serving.ray_scoring`) and the feature
transform (:mod:`recsys_moe.features.ray_transform`). Imports Ray only when called.
"""

from __future__ import annotations

import logging


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://<head>:10001``), or with None start a Ray
    instance on this machine. True when this call connected, so the job disconnects at its end;
    False when Ray was already initialised (by a caller, or a test) and is left as it is."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address or None, log_to_driver=True, logging_level=logging.WARNING, include_dashboard=False)
    return True
