"""What the thin plugin, the agent (``xvm-cnid``) and ``xvmctl`` share: where the agent
listens, how long to wait for it, the CNI versions and commands, and the framing of
one request and its reply on the agent's unix socket.

The thin plugin runs as ``python3 -IS`` and imports this module on every call, so it
imports only builtins and the C halves of json and socket (``_json``; ``_socket`` only
when it talks to the agent, so VERSION never pays for it): ``import json`` would pull
in ``re`` and ``import socket`` ``enum`` and ``selectors``, which together doubled the
plugin's start-up.

Framing, one request per connection (the client shuts down its write side after the
request; the agent closes after its reply):

    plugin -> agent  {"env": {...}, "stdin": "...", "deadline": <unix time>}
    xvmctl -> agent  {"op": "status" | "gc" | "ping"}
    agent -> client  {"exit": N, "stdout": "...", "code": N}   served ("code" on errors)
                   | {"fallback": "why"}    not served: run it in-process, where you are
                   | {"error": "why"}       not served: busy, malformed, or too slow

``deadline`` is the wall-clock time (seconds since the epoch) after which the plugin
no longer waits: the agent must not start the work after it.
"""

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

try:
    import _json
except ImportError:  # another interpreter: the pure module does the same, slower
    import json as _json_module

    _json = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from _socket import socket as Socket

SOCKET_ENV = "XVM_CNID_SOCKET"
DEFAULT_SOCKET = "/run/xvm-cni/xvm-cnid.sock"
DEFAULT_TIMEOUT = 30.0   # seconds the plugin (and xvmctl) wait for the agent
MAX_TIMEOUT = 3600.0     # a larger agentTimeout is a typo, not a wish
DEFAULT_DATA_DIR = "/var/lib/cni/xvm-cni"
DEFAULT_CONF_DIR = "/etc/cni/net.d"

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# A config without cniVersion speaks 0.1.0 (libcni); no usable config at all gets the
# newest stable format.
IMPLIED_VERSION = "0.1.0"
UNKNOWN_CALLER_VERSION = "1.0.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

MAX_REQUEST_BYTES = 4 << 20
MAX_REPLY_BYTES = 16 << 20
_CHUNK = 65536


# --- JSON with the C half of json -------------------------------------------------------

class _ScannerOptions:
    """What ``_json.make_scanner`` reads from json.JSONDecoder: strict JSON, plain types."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, object] = {}  # noqa: RUF012 - the scanner's own cache slot

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")  # NaN/Infinity: not in RFC 8259


_scan = _json.make_scanner(_ScannerOptions()) if _json is not None else None  # type: ignore[arg-type]


def loads(text: str) -> object:
    """Strict JSON; ValueError for anything else, including nesting too deep to parse."""
    try:
        if _scan is None:
            return _json_module.loads(text)
        stripped = text.strip(" \t\n\r")
        try:
            value, end = _scan(stripped, 0)
        except (StopIteration, ValueError, SystemError):
            # The C scanner's error path wants json.decoder, which -IS has not loaded:
            # let the full module give the definitive answer (a ValueError).
            return _slow_loads(text)
        if end != len(stripped):
            return _slow_loads(text)
        return value
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _slow_loads(text: str) -> object:
    import json

    return json.loads(text, parse_constant=_ScannerOptions.parse_constant)


def dumps(value: object) -> str:
    if _json is None:
        return str(_json_module.dumps(value))
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(dumps(str(k)) + ": " + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


# --- what the caller's config says --------------------------------------------------------

def caller_version(conf: object) -> str:
    """The cniVersion the caller speaks, for answers (errors included) in its format."""
    if not isinstance(conf, dict):
        return UNKNOWN_CALLER_VERSION
    version = conf.get("cniVersion", IMPLIED_VERSION)
    return version if isinstance(version, str) else UNKNOWN_CALLER_VERSION


def declared_version(stdin: bytes) -> str:
    """``caller_version`` of raw stdin; never raises."""
    try:
        return caller_version(loads(stdin.decode("utf-8")))
    except ValueError:  # includes UnicodeDecodeError and nesting too deep
        return UNKNOWN_CALLER_VERSION


def version_reply(cni_version: str) -> dict[str, object]:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def timeout_problem(value: object) -> str:
    """Why ``agentTimeout`` is unusable ('' when it is fine). No arithmetic on the value
    before its type and size are known: a huge int must not raise OverflowError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number of seconds"
    # Exact for ints of any size (no float conversion); NaN fails both comparisons.
    if not 0 < value <= MAX_TIMEOUT:
        return f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds"
    return ""


def agent_timeout(conf: dict[str, object]) -> float | None:
    """Seconds to wait for the agent, or None when ``agentTimeout`` is unusable (the
    in-process path then reports it as code 7)."""
    value = conf.get("agentTimeout")
    if value is None:
        return DEFAULT_TIMEOUT
    return None if timeout_problem(value) else float(value)  # type: ignore[arg-type]


def agent_socket(conf: dict[str, object], env: dict[str, str]) -> str | None:
    """The agent's socket path: the config's ``agentSocket``, else $XVM_CNID_SOCKET, else
    the default; None when ``agentSocket`` is not a usable string."""
    path = conf.get("agentSocket") or env.get(SOCKET_ENV) or DEFAULT_SOCKET
    return path if isinstance(path, str) and "\0" not in path else None


# --- framing ------------------------------------------------------------------------------

class TooLarge(ValueError):
    """A message exceeded its size cap."""


def encode_request(env: dict[str, str], stdin: str, deadline: float) -> bytes:
    return dumps({"env": env, "stdin": stdin, "deadline": deadline}).encode("ascii")


def encode_op(op: str) -> bytes:
    return dumps({"op": op}).encode("ascii")


def served(exit_status: int, stdout: str, code: int | None) -> dict[str, object]:
    reply: dict[str, object] = {"exit": exit_status, "stdout": stdout}
    if code is not None:
        reply["code"] = code
    return reply


def fallback(why: str) -> dict[str, object]:
    return {"fallback": why}


def error(why: str) -> dict[str, object]:
    return {"error": why}


def decode(data: bytes) -> dict[str, object]:
    """One JSON object off the wire; ValueError otherwise."""
    message = loads(data.decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("the message is not a JSON object")
    return message


def read_message(sock: "Socket", cap: int, deadline: float) -> bytes:
    """Everything the peer sends until it shuts down its write side.

    ``deadline`` (time.monotonic()) bounds the whole message, not each recv: a peer
    that trickles a byte at a time is cut off at the deadline (TimeoutError). More than
    ``cap`` bytes: TooLarge, without reading the rest.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the message did not arrive in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(_CHUNK)
        except ConnectionResetError:
            # A peer that closes with our unsent data unread resets the connection after
            # what it sent: that was its whole message (a truncated one fails to decode).
            if not chunks:
                raise
            chunk = b""
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"message larger than {cap} bytes")
        chunks.append(chunk)


class NoAgent(Exception):
    """Nothing listens at the path (or we may not connect): ``cause`` says why."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class NoAnswer(Exception):
    """The agent took the connection but gave no usable answer in time."""


def exchange(path: str, request: bytes, deadline: float, cap: int = MAX_REPLY_BYTES) -> bytes:
    """Send one request to the agent at ``path`` and return its raw reply.

    ``deadline`` (time.monotonic()) bounds everything: connect, send and the reply. A
    full listen backlog (EAGAIN: a burst of pods) is waited out, since the agent is
    alive. Raises NoAgent or NoAnswer.
    """
    # Imported here: VERSION, answered by the plugin alone, never pays for it.
    try:
        import _socket
    except ImportError:  # another interpreter
        import socket as _socket  # type: ignore[no-redef]

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, path, deadline)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(request)
            sock.shutdown(_socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered early (e.g. "too large") and closed: read why
        except OSError as exc:  # includes the timeout
            raise NoAnswer(str(exc)) from exc
        try:
            reply = read_message(sock, cap, deadline)
        except (OSError, ValueError) as exc:  # includes TimeoutError and TooLarge
            raise NoAnswer(str(exc)) from exc
    finally:
        sock.close()
    if not reply:
        raise NoAnswer("the agent closed the connection without an answer")
    return reply


def _connect(sock: "Socket", path: str, deadline: float) -> None:
    pause = 0.001
    while True:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(path)
            return
        except BlockingIOError as exc:
            if time.monotonic() + pause > deadline:
                raise NoAnswer("the agent's connection queue stayed full") from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        except TimeoutError as exc:
            raise NoAnswer("connecting to the agent timed out") from exc
        except OSError as exc:
            raise NoAgent(exc) from exc
