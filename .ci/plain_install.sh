#!/usr/bin/env bash
# The plain install, as a user gets it: build the wheel, install it with no extras
# into a fresh venv (no system site-packages), and use it from outside the source
# tree. The dev install that the tests run in has every extra, and so hides an
# import that only an extra satisfies (issue 10: sniffio came only through trio).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip wheel -q --no-deps --wheel-dir "$work/dist" "$repo"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q "$work"/dist/gpupool-*.whl
echo "plain install: $("$py" -m pip list --format=freeze | tr '\n' ' ')"

cd "$work"  # not the source tree: `import gpupool` must find the installed copy
"$py" -c '
import sys, gpupool
assert gpupool.__file__.startswith(sys.prefix), gpupool.__file__
print("import gpupool: ok,", len(sys.modules), "modules")
'
# The demo makes its own temporary directory: keep it inside $work.
TMPDIR="$work" "$work/venv/bin/gpupool" demo >"$work/demo.out" 2>&1 || {
    cat "$work/demo.out"
    exit 1
}
grep -E "^[0-9]+ succeeded, [0-9]+ failed" "$work/demo.out"
"$work/venv/bin/gpupool" status --fake-gpus 2 --json >"$work/status.json"
"$py" -c '
import json, sys
gpus = json.load(open(sys.argv[1]))
assert [g["index"] for g in gpus] == [0, 1], gpus
print("gpupool status --fake-gpus 2 --json: ok")
' "$work/status.json"
"$py" "$repo/.ci/smoke_acquire.py" asyncio
"$py" -m pip install -q trio  # for the trio step only; trio brings sniffio with it
"$py" "$repo/.ci/smoke_acquire.py" trio
