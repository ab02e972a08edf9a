"""One SQLite connection that appends a group of rows as one transaction (pure-Python twin).

The twin of ``_sqlite_group.pyx``, with the same names: the same statements through the sqlite3
module (``executemany``, which lets the interpreter lock go and takes it back around every
row's step).
"""

from __future__ import annotations

import ctypes
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["SYNCHRONOUS", "GroupWriter", "library_address"]

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def library_address() -> int | None:
    """Where ``sqlite3_libversion`` of the SQLite library the sqlite3 module calls lies in
    memory; None when it cannot be told (the library's symbols are not visible)."""
    import _sqlite3

    try:
        library = ctypes.CDLL(getattr(_sqlite3, "__file__", None))
        return ctypes.cast(library.sqlite3_libversion, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None


class GroupWriter:
    """A connection to the SQLite file ``path`` that appends groups: ``begin``, then ``write``
    (or ``rollback``). ``synchronous``: the PRAGMA of that name (FULL: a commit survives a power
    cut); ``busy_timeout_ms``: how long ``begin`` waits for another connection's write lock
    (0: it answers "database is locked" at once).

    One thread at a time: the caller serialises its calls. After an exception from ``begin``
    or ``write`` the transaction stays open until ``rollback``."""

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be 0 or more, not {busy_timeout_ms}")
        self.path = path
        self._connection: sqlite3.Connection | None = sqlite3.connect(
            path, timeout=busy_timeout_ms / 1000.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._run(f"PRAGMA synchronous={synchronous}")
            self._run("PRAGMA foreign_keys=ON")
        except BaseException:  # not a usable connection: closed now, not when collected
            self.close()
            raise

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return self._connection

    def _run(self, sql: str) -> tuple[Any, ...] | None:
        cursor = self._open().execute(sql)
        try:
            row = cursor.fetchone()
            if row is not None:
                cursor.fetchall()
            return None if row is None else tuple(row)
        finally:
            cursor.close()

    def begin(self, select_sql: str) -> tuple[Any, ...] | None:
        """BEGIN IMMEDIATE, waiting up to the busy timeout for the write lock, then the first row
        of ``select_sql`` (a tuple; None when it has none)."""
        self._run("BEGIN IMMEDIATE")
        return self._run(select_sql)

    def write(self, insert_sql: str, rows: Iterable[Sequence[Any]], update_sql: str, update_parameters: Sequence[Any]) -> None:
        """Run ``insert_sql`` once per row of ``rows``, then ``update_sql`` with
        ``update_parameters``, then COMMIT."""
        cursor = self._open().cursor()
        try:
            cursor.executemany(insert_sql, rows)
            cursor.execute(update_sql, update_parameters)
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    def rollback(self) -> None:
        """Roll the open transaction back (nothing when none is open)."""
        if self._connection is not None and self._connection.in_transaction:
            self._run("ROLLBACK")

    def pragma(self, name: str) -> Any:
        """The value of ``PRAGMA name``."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        row = self._run(f"PRAGMA {name}")
        return None if row is None else row[0]

    @property
    def in_transaction(self) -> bool:
        return self._connection is not None and self._connection.in_transaction

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back); again: nothing."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
