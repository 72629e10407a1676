"""sqlite3 plumbing for the durable per-network store: connection, schema,
transactions, and errors a person can act on.

Runtimes run many plugin processes at once and may kill any of them; sqlite in
WAL mode gives cross-process locking and all-or-nothing transactions without a
daemon. Every write takes the write lock up front (``BEGIN IMMEDIATE``) so two
writers never both read a free address and then race to claim it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType

from xvmcni.errors import IO_FAILURE, TRY_AGAIN_LATER, CniError

# A schema migration step: turns a database of version N into version N + 1, inside
# the transaction that then sets the new version (all or nothing).
Migration = Callable[[sqlite3.Connection], None]

# sqlite3 exports these names only from Python 3.11; we support 3.10.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        # The primary code is the low byte; extended codes like SQLITE_BUSY_RECOVERY
        # are still "somebody else holds it".
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Database:
    """One sqlite3 file with a versioned schema.

    Contract:
    - WAL journal, synchronous=FULL: a kill -9 at any instant leaves either the
      whole transaction or none of it.
    - Every write is one ``BEGIN IMMEDIATE`` transaction. If the database stays
      locked longer than ``timeout`` seconds: CniError(TRY_AGAIN_LATER=11).
    - Any other sqlite failure, a damaged file included, is CniError(IO_FAILURE=5)
      naming the file, never an unexplained crash.
    - Creates the parent directory (mode 0700) and the schema if missing.
    - Upgrades an older file in place: ``migrations[n]`` turns version n into n + 1;
      the steps from the file's version up run in one write transaction, then the
      schema statements (``IF NOT EXISTS``: new tables and indexes).
    """

    def __init__(self, path: Path, schema: Sequence[str], version: int,
                 timeout: float = 10.0,
                 migrations: Mapping[int, Migration] | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.migrations = dict(migrations or {})
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot create state directory {self.path.parent}",
                           str(exc)) from exc
        try:
            # isolation_level=None: the sqlite3 module must not open transactions
            # behind our back; we issue BEGIN IMMEDIATE/COMMIT ourselves.
            self._conn = sqlite3.connect(str(self.path), timeout=timeout,
                                         isolation_level=None)
        except sqlite3.Error as exc:
            raise self.translate(exc, "opening") from exc
        try:
            self._setup(schema, version)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, schema: Sequence[str], version: int) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._conn.execute("PRAGMA foreign_keys = ON")
                mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    # Switching to WAL needs an exclusive lock and does not always go
                    # through the busy handler, hence the retry loop around it.
                    self._conn.execute("PRAGMA journal_mode = WAL")
                # Per connection, not stored in the file: without FULL a power cut
                # could lose a commit that already told the runtime "address X is
                # yours".
                self._conn.execute("PRAGMA synchronous = FULL")
                break
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise self.translate(exc, "opening") from exc
                time.sleep(0.01)
        # Read first: once the schema exists, opening must not queue behind a writer.
        if self._schema_version() == version:
            return
        with self.write("creating the schema") as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > version:
                raise CniError(IO_FAILURE, f"state database {self.path} has schema version "
                               f"{found}; this xvm-cni understands up to {version}",
                               "a newer xvm-cni wrote it; upgrade this host's plugin")
            if found < version:
                # 0 is a new file: the schema alone makes it current.
                for step in range(found, version) if found > 0 else ():
                    if step in self.migrations:
                        self.migrations[step](conn)
                for statement in schema:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(version)}")

    def _schema_version(self) -> int:
        try:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self.translate(exc, "opening") from exc

    def translate(self, exc: sqlite3.Error, doing: str) -> CniError:
        if _is_busy(exc):
            return CniError(
                TRY_AGAIN_LATER,
                f"state database {self.path} is locked by another process",
                f"gave up {doing} after waiting {self.timeout:g}s; the runtime should retry",
            )
        text = str(exc)
        if "malformed" in text or "not a database" in text:
            return CniError(IO_FAILURE, f"state database {self.path} is damaged",
                            f"{exc}; see 'Recovering a damaged IPAM store' in the README "
                            "(xvmctl ipam rebuild)")
        return CniError(IO_FAILURE, f"state database {self.path} failed while {doing}",
                        str(exc))

    @contextmanager
    def _transaction(self, mode: str, doing: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:
            raise self.translate(exc, doing) from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            self._rollback()
            raise self.translate(exc, doing) from exc
        except BaseException:
            self._rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self.translate(exc, doing) from exc

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                # sqlite already rolled back on its own (e.g. after SQLITE_FULL); the
                # error that brought us here is the one worth reporting.
                return

    def write(self, doing: str = "writing") -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("IMMEDIATE", doing)

    def read(self, doing: str = "reading") -> AbstractContextManager[sqlite3.Connection]:
        # A read transaction so several SELECTs see one consistent snapshot.
        return self._transaction("DEFERRED", doing)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
