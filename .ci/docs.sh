#!/usr/bin/env bash
# The documentation site (mkdocs.yml; docs/architecture.md, "Writing the docs").
# 1. `mkdocs build --strict`: a broken link or anchor, a page missing from the
#    nav, an API reference entry that names nothing or a docstring that does
#    not render fails. (tests/test_docs_reference.py checks the other way: every
#    public name has an entry.)
# 2. .ci/browser_check.py: the built site served on 127.0.0.1 and loaded in
#    headless Chromium (home, tutorial, an API page, the search); any console
#    error, failed request or request to the internet fails. Screenshots go to
#    $SCREENSHOTS (default site-screenshots/, gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
export NO_MKDOCS_2_WARNING=1  # Material's banner about its successor, printed on every build
python3 -m pip install -q -e '.[docs]'
# Playwright's own browser download needs the internet; Debian's chromium does not.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "docs.sh: no chromium on PATH; install Debian's chromium package (apt-get install chromium)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The picture of a run in docs/journal.md, drawn from a fresh demo run (not committed).
bash .ci/docs_pictures.sh
python3 -m mkdocs build --strict --quiet
python3 .ci/browser_check.py --site site --screenshots "${SCREENSHOTS:-site-screenshots}"
