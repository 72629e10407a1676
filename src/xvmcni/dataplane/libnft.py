"""nftables through libnftables, in this process (ctypes), when the library is there.

``nft`` is a thin program around libnftables; running it costs a fork and exec per
batch (2 to 3 ms measured on the project machine, and more under load) where the
same batch through the library takes about 0.1 ms. Debian's Python binding for it
(python3-nftables) is not on PyPI, so this module binds the few functions we need.
Callers fall back to the ``nft`` program when the library cannot be loaded.

A context's netlink socket belongs to the network namespace the thread was in when
it was made. Each thread keeps one context for the namespace it is in and makes a
new one when it has moved: closing a socket after deleting set elements waits for
the kernel (an RCU grace period, 11 to 14 ms measured) where the same delete on a
kept socket takes 0.2 ms, so the agent's worker threads, which stay in the host's
namespace, never pay it per request. Calls are serialised because libnftables does
not promise thread safety across contexts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

_JSON_OUTPUT = 1 << 4  # NFT_CTX_OUTPUT_JSON
_lock = threading.Lock()


def _current_netns() -> tuple[int, int]:
    found = os.stat("/proc/thread-self/ns/net")
    return (found.st_dev, found.st_ino)


class _Library:
    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib
        self._local = threading.local()

    def _context(self) -> int | None:
        """This thread's context for the namespace it is in now (made when needed)."""
        netns = _current_netns()
        kept = getattr(self._local, "ctx", None)
        if kept is not None and self._local.netns == netns:
            return int(kept)
        if kept is not None:
            # The thread moved to another namespace: the old socket would still talk
            # to the old one (and keep it alive). Replace it.
            self.lib.nft_ctx_free(kept)
            self._local.ctx = None
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            return None
        self.lib.nft_ctx_output_set_flags(ctx, _JSON_OUTPUT)
        self.lib.nft_ctx_buffer_output(ctx)
        self.lib.nft_ctx_buffer_error(ctx)
        self._local.ctx, self._local.netns = ctx, netns
        return int(ctx)

    def run(self, command: str) -> tuple[int, str, str]:
        with _lock:
            ctx = self._context()
            if ctx is None:
                return 1, "", "libnftables could not create a context"
            rc = self.lib.nft_run_cmd_from_buffer(ctx, command.encode())
            # The buffers are reset by the next command on this context.
            out = self.lib.nft_ctx_get_output_buffer(ctx) or b""
            err = self.lib.nft_ctx_get_error_buffer(ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


def _load() -> _Library | None:
    for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
        if not name:
            continue
        try:
            return _Library(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    return None


LIBRARY = _load()
