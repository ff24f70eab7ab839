#!/usr/bin/env bash
# System packages the tests need beyond PyPI: headless Chromium for the dashboard screenshot test
# (tests/studies/test_dashboard.py), DejaVu fonts so the page has text, and PostgreSQL for the
# cluster-storage tests (tests/search/test_postgres.py starts a private server on 127.0.0.1).
# Debian/Ubuntu; idempotent.
set -euo pipefail
have_pg() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
command -v chromium >/dev/null && have_pg && exit 0
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "note: chromium or postgresql is missing and this user cannot install them; their tests will skip" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get; install chromium and postgresql yourself, or their tests will skip" >&2
    exit 0
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core postgresql
