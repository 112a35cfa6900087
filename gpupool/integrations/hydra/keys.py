"""The journal key of a Hydra job: its app's name and its overrides.

A rerun of a multirun must find its finished jobs again, so the key depends
only on what makes the job: ``hydra.job.name`` (the app, ``train`` for
``train.py``) and the job's overrides as the sweeper gave them
(``["lr=0.1", "seed=1"]``). Not on its index in the sweep (adding a value to
a sweep renumbers the jobs after it) nor on the sweep directory (the journal
lives there). The overrides are kept in their order: Hydra applies them in
order, so two orders are not known to make the same config.

``"<job name>:<24 hex digits>"``, the digits a SHA-256 of the canonical JSON
of the overrides (gpupool/_journal/codec.py), the same in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..._journal.codec import canonical_json

__all__ = ["job_key"]


def job_key(job_name: str, overrides: Sequence[str]) -> str:
    """The key that names the job ``overrides`` of app ``job_name`` in the journal."""
    payload = canonical_json({"overrides": list(overrides)}, what="overrides")
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]
    return f"{job_name}:{digest}"
