"""docs/_ext/hooks.py: the guide's public names link to the API reference, and nothing else does."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

HOOKS = Path(__file__).resolve().parents[1] / "docs" / "_ext" / "hooks.py"


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpupool_docs_hooks", HOOKS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_public_names_link_and_the_rest_is_left_alone() -> None:
    hooks = _hooks()
    targets = {
        "GPUResourcePool": "gpupool.GPUResourcePool",
        "gpupool.run_process": "gpupool.run_process",
    }
    markdown = "\n".join(
        [
            "# The `GPUResourcePool`",  # a heading
            "Open a `GPUResourcePool`, then `gpupool.run_process` or `GPUResourcePool(pool)`.",
            "See [`GPUResourcePool`](pool.md) and `Unknown`.",  # a link already; no entry
            "```python",
            "`GPUResourcePool`",  # inside a fence
            "```",
        ]
    )
    assert hooks.link_public_names(markdown, targets).split("\n") == [
        "# The `GPUResourcePool`",
        "Open a [`GPUResourcePool`][gpupool.GPUResourcePool], then "
        "[`gpupool.run_process`][gpupool.run_process] or `GPUResourcePool(pool)`.",
        "See [`GPUResourcePool`](pool.md) and `Unknown`.",
        "```python",
        "`GPUResourcePool`",
        "```",
    ]


def test_the_targets_are_the_reference_entries() -> None:
    targets = _hooks()._targets()
    assert targets["GPUResourcePool"] == "gpupool.GPUResourcePool"
    assert targets["gpupool.GPUResourcePool"] == "gpupool.GPUResourcePool"
    assert targets["RayCluster"] == "gpupool.integrations.ray.RayCluster"
    assert "fake_uuid" not in targets  # gpupool.testing's names only in full
    assert targets["gpupool.testing.fake_uuid"] == "gpupool.testing.fake_uuid"
