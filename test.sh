#!/usr/bin/env bash
# sudo ./test.sh [pytest args...] — bootstrap (with podman & co.), ruff, mypy, then
# pytest over unit, integration and e2e tests. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ $EUID -ne 0 ]]; then
    echo "test.sh: warning: not root; integration and e2e tests need root (sudo ./test.sh)" >&2
fi

./scripts/bootstrap.sh --test

failed=()
step() {
    local name="$1"
    shift
    echo "== $name: $*"
    local rc=0
    "$@" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "== $name FAILED (exit $rc)" >&2
        failed+=("$name")
    fi
    return 0
}

step ruff .venv/bin/ruff check src tests
step mypy .venv/bin/mypy
# pytest exits 5 when it collected nothing: counted as a failure like any non-zero exit.
step pytest .venv/bin/pytest -v -rs tests "$@"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all steps passed"
