#!/usr/bin/env bash
# System packages the tests need beyond PyPI: headless Chromium for the dashboard screenshot test
# (tests/studies/test_dashboard.py) and DejaVu fonts so the page has text. Debian/Ubuntu; idempotent.
set -euo pipefail
command -v chromium >/dev/null && exit 0
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "note: chromium is missing and this user cannot install it; the dashboard screenshot test will skip" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get; install chromium yourself for the dashboard screenshot test" >&2
    exit 0
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
