#!/usr/bin/env bash
# The docs' picture of a run (docs/journal.md, "Pictures of a run"): run the bundled
# demo (real processes on fake GPUs, a retried job and a CPU-only one) and draw its
# journal with `gpupool journal plot`. Needs the extra `plot` (matplotlib). The
# pictures are generated, never committed (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
workdir="$(mktemp -d "${TMPDIR:-/tmp}/gpupool-docs-demo.XXXXXX")"
trap 'rm -rf "$workdir"' EXIT
if ! "$python" -m gpupool demo --dir "$workdir" --fake-gpus 4 >"$workdir/demo.log" 2>&1; then
    cat "$workdir/demo.log" >&2
    exit 1
fi
journal="$workdir/demo_jobs.txt.journal.sqlite"
mkdir -p docs/images
for extension in svg png; do
    "$python" -m gpupool journal plot "$journal" -o "docs/images/demo_run.$extension"
done
