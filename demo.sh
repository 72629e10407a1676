#!/usr/bin/env bash
# sudo ./demo.sh          — a three-host lab (network namespaces on this machine), two pods
#                            per host on one VXLAN network (seed 000), then a connectivity
#                            check; the lab is always torn down.
# sudo ./demo.sh routed   — the same with the routed model (a pod CIDR per host, routes
#                            over VXLAN) on a routed underlay: hosts in two subnets behind a
#                            router that carries no multicast.
# sudo ./demo.sh macvlan  — the macvlan model (seed 004): networks blue and red over the
#                            three hosts, every host a router into both.
# sudo ./demo.sh routed-etcd — the routed demo with the etcd control plane: an etcd in its
#                            own namespace on the underlay; each host's agent claims its pod
#                            CIDR there, publishes itself and programs the others.
# sudo ./demo.sh l2-etcd  — seed 000's l2 network across that router: etcd instead of
#                            multicast (unicast flooding, address blocks claimed in etcd).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh: needs root (network namespaces, bridges, VXLAN): sudo ./demo.sh" >&2
    exit 1
fi

lab=xvmdemo
mode=${1:-l2}
if [[ $mode == *-etcd ]]; then
    ./scripts/bootstrap.sh --etcd
else
    ./scripts/bootstrap.sh
fi
case "$mode" in
    l2) lab_args=() ;;
    routed) lab=xvmdemort; lab_args=(--model routed --encap vxlan --underlay routed) ;;
    macvlan) lab=xvmdemomv; lab_args=(--model macvlan) ;;
    routed-etcd)
        lab=xvmdemoet
        lab_args=(--model routed --encap vxlan --underlay routed --control etcd) ;;
    l2-etcd) lab=xvmdemoel; lab_args=(--model l2 --underlay routed --control etcd) ;;
    *) echo "demo.sh: unknown demo '$mode' (use: l2, routed, routed-etcd, l2-etcd, macvlan)" >&2
       exit 2 ;;
esac
teardown() {
    echo "demo: tearing down lab $lab"
    .venv/bin/xvmctl lab down --name "$lab" || echo "demo: warning: lab down failed" >&2
}
trap teardown EXIT

rc=0
.venv/bin/xvmctl lab up --hosts 3 --pods 2 --name "$lab" "${lab_args[@]}" || rc=$?
if [[ $rc -eq 0 ]]; then
    echo "demo: OK"
else
    echo "demo: lab up failed (exit $rc)" >&2
fi
exit "$rc"
