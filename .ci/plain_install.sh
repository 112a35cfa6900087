#!/usr/bin/env bash
# The plain install, as a user gets it: build the wheel, install it with no extras
# into a fresh venv (no system site-packages), and use it from outside the source
# tree. The dev install that the tests run in has every extra, and so hides an
# import that only an extra satisfies (issue 10: sniffio came only through trio).
# Twice: with the newest releases of gpupool's dependencies, and with the oldest
# that pyproject.toml allows (each `name>=floor` pinned to `name==floor`).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip wheel -q --no-deps --wheel-dir "$work/dist" "$repo"
wheel="$(echo "$work"/dist/gpupool-*.whl)"

python3 - "$repo/pyproject.toml" >"$work/floors.txt" <<'PY'
import re, sys, tomllib
with open(sys.argv[1], "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
for dependency in dependencies:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,;\s]+)", dependency)
    if match is None:
        sys.exit(f"plain_install.sh: {dependency!r} in pyproject.toml has no plain `>=` floor")
    print(f"{match[1]}=={match[2]}")
PY

smoke() {  # smoke NAME [pip options]: a fresh venv with the wheel, and use it
    local name="$1" venv="$work/$1"
    shift
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$@" "$wheel"
    echo "plain install ($name): $("$venv/bin/python" -m pip list --format=freeze | tr '\n' ' ')"
    (
        cd "$work" # not the source tree: `import gpupool` must find the installed copy
        "$venv/bin/python" -c '
import sys, gpupool
assert gpupool.__file__.startswith(sys.prefix), gpupool.__file__
print("import gpupool: ok,", len(sys.modules), "modules")
'
        # The test helpers import with neither pytest nor Hypothesis installed.
        "$venv/bin/python" -c 'import gpupool.testing; print("import gpupool.testing: ok")'
        # The demo makes its own temporary directory: keep it inside $work.
        TMPDIR="$work" "$venv/bin/gpupool" demo >"$venv/demo.out" 2>&1 || {
            cat "$venv/demo.out"
            exit 1
        }
        grep -E "^[0-9]+ succeeded, [0-9]+ failed" "$venv/demo.out"
        "$venv/bin/gpupool" status --fake-gpus 2 --json >"$venv/status.json"
        "$venv/bin/python" -c '
import json, sys
status = json.load(open(sys.argv[1]))
assert status["schema"] == 1, status
assert [g["index"] for g in status["gpus"]] == [0, 1], status
print("gpupool status --fake-gpus 2 --json: ok")
' "$venv/status.json"
        "$venv/bin/python" "$repo/.ci/smoke_acquire.py" asyncio
        # trio for the trio step only (it brings sniffio along): the trio that the
        # installed anyio supports, which may need newer packages than the floors.
        "$venv/bin/python" -m pip install -q "anyio[trio]"
        "$venv/bin/python" "$repo/.ci/smoke_acquire.py" trio
    )
}

smoke newest
smoke floors --constraint "$work/floors.txt"
