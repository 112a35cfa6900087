"""Without the extra `ray`, gpupool.integrations.ray says how to get it (a fresh
interpreter in which `import ray` fails as it does where Ray is not installed)."""

from __future__ import annotations

import subprocess
import sys

MISSING_RAY = """
import sys
sys.modules["ray"] = None  # what an interpreter without Ray finds: `import ray` fails
import gpupool  # the package itself never needs Ray
try:
    import gpupool.integrations.ray
except ImportError as error:
    print(error)
else:
    print("imported")
"""


def test_importing_the_ray_integration_without_ray_names_the_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MISSING_RAY], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == ("gpupool.integrations.ray needs Ray: pip install 'gpupool[ray]'")
