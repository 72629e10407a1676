"""The IPAM interface: who chooses a container's addresses, and how they are
released, checked, counted and garbage-collected.

Every implementation records through the network's ``AttachmentRegistry`` (the
durable list of attachments); what differs is who chooses the addresses: our
own per-host slice allocator (``slices``) or an external CNI IPAM plugin
(``delegated``). A cluster-wide block allocator would be a third module here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from xvmcni.state.attachments import Attachment, AttachmentRegistry, IPAddress


@dataclass(frozen=True)
class Usage:
    """Addresses in use against what this host may hand out (size None: unknown,
    e.g. a delegated plugin's range)."""

    used: int
    size: int | None
    range: str = ""


class Ipam(Protocol):
    # True when the container's interface must exist before addresses can be chosen
    # (a dhcp plugin leases through it); the command flow then plugs first.
    needs_interface: bool

    def allocate(self, registry: AttachmentRegistry, record: Attachment,
                 requested: list[IPAddress]) -> tuple[Attachment, bool]:
        """Record ``record`` with its addresses; (attachment, created). An existing
        record is returned unchanged with created False."""
        ...

    def validate(self, requested: list[IPAddress]) -> None:
        """Raise CniError when the requested addresses can never be given here (outside
        what this IPAM hands out, reserved, repeated); called before the host changes."""
        ...

    def release(self, registry: AttachmentRegistry, container_id: str,
                ifname: str) -> Attachment | None:
        """Give the attachment's addresses back; releasing twice is fine."""
        ...

    def forget(self, released: list[Attachment]) -> None:
        """Tell whoever chose them that these attachments (already removed from the
        registry, e.g. by GC or reconcile) are gone."""
        ...

    def gc(self, registry: AttachmentRegistry,
           valid: set[tuple[str, str]]) -> list[Attachment]:
        """Release every attachment not in ``valid``; return them."""
        ...

    def check(self) -> None:
        """Raise CniError when the IPAM side of the attachment is not as ADD left it."""
        ...

    def dns(self) -> dict[str, Any]:
        """DNS settings the chooser supplied with the addresses (a delegated plugin's)."""
        ...

    def usage(self, registry: AttachmentRegistry | None) -> Usage:
        """Addresses in use (``registry`` None: the network has no state here yet)."""
        ...

    def status(self, registry: AttachmentRegistry | None) -> None:
        """Raise CniError(50) when no ADD could get an address now."""
        ...


class OwnRecords:
    """What every IPAM that chooses addresses itself shares: the registry is the only
    record, so releasing, forgetting and collecting are the registry's work, and there
    is nothing else to check and no DNS to hand on."""

    needs_interface = False

    def release(self, registry: AttachmentRegistry, container_id: str,
                ifname: str) -> Attachment | None:
        return registry.detach(container_id, ifname)

    def forget(self, released: list[Attachment]) -> None:
        return None  # the registry was the only record

    def gc(self, registry: AttachmentRegistry,
           valid: set[tuple[str, str]]) -> list[Attachment]:
        return registry.gc(valid)

    def check(self) -> None:
        return None

    def dns(self) -> dict[str, Any]:
        return {}
