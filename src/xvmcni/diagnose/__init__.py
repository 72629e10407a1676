"""``xvmctl doctor``: read-only diagnosis of the xvm-cni networks of one host.

A diagnosis is a list of ``Finding``s (✓ / ✗ / ! / ?), each with the subject it is
about, the cause in one sentence and the command that fixes it. They come from
small check modules, one per concern, listed in ``registry.CHECKS``:

    checks.agent         the node agent: answering, version, last reconcile
    checks.plugin        the plugin file and its interpreter
    checks.hostif        hostInterface: exists, up, address family, MTU vs overhead
    checks.kernel        modules, ip_forward, rp_filter against our routes
    checks.firewall      FORWARD drop with bridge-nf-call, VXLAN port dropped in INPUT
    checks.objects       our devices/tables present; leftovers of gone networks
    checks.macvlan       macvlan: device marks, bypass table routes, isolation table
    checks.peers         kernel per-peer state against the control plane
    checks.multicast     group joined, remote VTEPs learned (l2 flood-and-learn)
    checks.controlplane  the control plane reachable and our record fresh (etcd)
    checks.ipam          usage, exhaustion, records of containers that are gone

What differs per network model (device names, overhead, which source prefixes
arrive on which interface, the per-peer diff) is in ``models.INSPECTORS``, one
entry per model; what differs per control plane is in ``peersource.SOURCES``.
A new model or control plane adds one entry there (and, if it has concerns of
its own, one check module). Nothing here changes the host.
"""
