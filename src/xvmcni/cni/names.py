"""Names the kernel will be asked to create, checked as the kernel checks them, and
values shown in error messages without ever failing to show them. Stdlib only: the
request parser (the plugin's fast path) uses it.
"""

from __future__ import annotations

from typing import Any

IFNAME_MAX_BYTES = 15  # IFNAMSIZ - 1: the kernel counts bytes, not characters


def interface_name_problem(name: str) -> str:
    """Why the kernel (or a sysctl path built from it) would not take ``name`` as an
    interface name; '' when it would.

    The kernel's dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or
    whitespace. Stricter here: any Unicode whitespace, control characters (a NUL
    would cut the name short in netlink) and '%' (the kernel reads "eth%d" as a
    template and picks a name of its own).
    """
    if not name:
        return "it is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > IFNAME_MAX_BYTES:
        return f"it is {size} bytes long; the kernel allows at most {IFNAME_MAX_BYTES}"
    if name in (".", ".."):
        return "'.' and '..' are not interface names"
    for char in name:
        if char in "/:%":
            return f"it contains {char!r}"
        if char.isspace():
            return "it contains whitespace"
        if ord(char) < 32 or ord(char) == 127 or not char.isprintable():
            return f"it contains the control character {char!r}"
    return ""


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters. Never raises: Python refuses to
    convert an integer of more than 4300 digits to text, and an error message must
    not become an internal error of its own."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too large to show"
    except RecursionError:
        return "a value nested too deeply to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."
