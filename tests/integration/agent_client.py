"""A raw, misbehaving client of xvm-cnid, run by the tests inside a simulated host's
network namespace (the agent serves only callers in its own namespaces):

    agent_client.py slow SOCKET PIECES INTERVAL < request   trickle a request, print reply
    agent_client.py raw SOCKET < request                    send it whole, print reply
    agent_client.py flood SOCKET N                           N requests with made-up commands
    agent_client.py hold SOCKET N < request                  keep N requests open until stdin
                                                             closes; print the (N+1)th's fate
    agent_client.py scrape PORT                              print 127.0.0.1:PORT/metrics

Output: one JSON object on stdout.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from typing import Any

from xvmcni.cni import wire


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    return sock


def _reply(sock: socket.socket) -> Any:
    data = wire.read_message(sock, wire.MAX_REPLY_BYTES, time.monotonic() + 60)
    return json.loads(data) if data else None


def slow(path: str, pieces: int, interval: float, request: bytes) -> dict[str, Any]:
    sock = _connect(path)
    size = -(-len(request) // pieces)
    send_error = ""
    for i in range(0, len(request), size):
        try:
            sock.sendall(request[i:i + size])
        except OSError as exc:   # the agent cut us off
            send_error = str(exc)
            break
        time.sleep(interval)
    else:
        sock.shutdown(socket.SHUT_WR)
    return {"reply": _reply(sock), "send_error": send_error}


def raw(path: str, request: bytes) -> dict[str, Any]:
    reply = wire.exchange(path, request, time.monotonic() + 60)
    return {"reply": json.loads(reply)}


def flood(path: str, count: int) -> dict[str, Any]:
    codes: dict[str, int] = {}
    for i in range(count):
        env = {"CNI_COMMAND": f"BOGUS{i}", "CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0"}
        data = wire.exchange(path, wire.encode_request(env, "{}", time.time() + 30),
                             time.monotonic() + 30)
        key = str(json.loads(data).get("code"))
        codes[key] = codes.get(key, 0) + 1
    return {"codes": codes}


def hold(path: str, count: int, request: bytes) -> dict[str, Any]:
    held = []
    for _ in range(count):
        sock = _connect(path)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        held.append(sock)
    try:
        extra = json.loads(wire.exchange(path, wire.encode_op("ping"), time.monotonic() + 30))
        print(json.dumps({"extra": extra}), flush=True)
        sys.stdin.read()   # until the test is done with the full agent
    finally:
        for sock in held:
            sock.close()
    return {"released": count}


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return {"metrics": resp.read().decode()}


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "slow":
        out = slow(argv[1], int(argv[2]), float(argv[3]), sys.stdin.buffer.read())
    elif mode == "raw":
        out = raw(argv[1], sys.stdin.buffer.read())
    elif mode == "flood":
        out = flood(argv[1], int(argv[2]))
    elif mode == "hold":
        out = hold(argv[1], int(argv[2]), sys.stdin.buffer.readline())
    elif mode == "scrape":
        out = scrape(int(argv[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
