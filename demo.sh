#!/usr/bin/env bash
# sudo ./demo.sh — a three-host lab (network namespaces on this machine), two pods per
# host on one VXLAN network, then a connectivity check; the lab is always torn down.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh: needs root (network namespaces, bridges, VXLAN): sudo ./demo.sh" >&2
    exit 1
fi

./scripts/bootstrap.sh

lab=xvmdemo
teardown() {
    echo "demo: tearing down lab $lab"
    .venv/bin/xvmctl lab down --name "$lab" || echo "demo: warning: lab down failed" >&2
}
trap teardown EXIT

rc=0
.venv/bin/xvmctl lab up --hosts 3 --pods 2 --name "$lab" || rc=$?
if [[ $rc -eq 0 ]]; then
    echo "demo: OK"
else
    echo "demo: lab up failed (exit $rc)" >&2
fi
exit "$rc"
