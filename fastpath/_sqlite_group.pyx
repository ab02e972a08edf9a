# cython: language_level=3
"""One SQLite connection that appends a group of rows as one transaction (compiled).

``begin`` takes the write lock (BEGIN IMMEDIATE) and reads one row; ``write`` binds and inserts
every row, runs one UPDATE and commits, all with the interpreter lock let go once. The sqlite3
module lets the lock go and takes it back around every row's step, and a writer thread that
shares a process with a busy event loop waits for its turn at every one of them. Its twin,
``_sqlite_group_py``, does the same through the sqlite3 module; they raise the same sqlite3
exceptions for the same mistakes.

The connection must live in a process whose ``sqlite3`` module uses this same SQLite library
(``library_address``): two copies of SQLite in one process do not see each other's POSIX locks.
``lockgate.fastpath._select`` checks that before it loads this module.
"""

import sqlite3 as _sqlite

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport malloc, free
from libc.string cimport strncpy

cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    ctypedef long long sqlite3_int64
    int SQLITE_OK, SQLITE_ROW, SQLITE_DONE
    int SQLITE_INTERNAL, SQLITE_NOTFOUND, SQLITE_NOMEM, SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_TOOBIG
    int SQLITE_CONSTRAINT, SQLITE_MISMATCH, SQLITE_MISUSE, SQLITE_RANGE
    int SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL
    int SQLITE_OPEN_READWRITE, SQLITE_OPEN_CREATE, SQLITE_OPEN_FULLMUTEX
    int sqlite3_open_v2(const char*, sqlite3**, int, const char*)
    int sqlite3_close_v2(sqlite3*)
    int sqlite3_prepare_v2(sqlite3*, const char*, int, sqlite3_stmt**, const char**)
    int sqlite3_finalize(sqlite3_stmt*)
    int sqlite3_bind_int64(sqlite3_stmt*, int, sqlite3_int64)
    int sqlite3_bind_double(sqlite3_stmt*, int, double)
    int sqlite3_bind_text(sqlite3_stmt*, int, const char*, int, void*)
    int sqlite3_bind_blob(sqlite3_stmt*, int, const void*, int, void*)
    int sqlite3_bind_null(sqlite3_stmt*, int)
    int sqlite3_bind_parameter_count(sqlite3_stmt*)
    int sqlite3_step(sqlite3_stmt*)
    int sqlite3_reset(sqlite3_stmt*)
    int sqlite3_column_count(sqlite3_stmt*)
    int sqlite3_column_type(sqlite3_stmt*, int)
    sqlite3_int64 sqlite3_column_int64(sqlite3_stmt*, int)
    double sqlite3_column_double(sqlite3_stmt*, int)
    const unsigned char* sqlite3_column_text(sqlite3_stmt*, int)
    const void* sqlite3_column_blob(sqlite3_stmt*, int)
    int sqlite3_column_bytes(sqlite3_stmt*, int)
    const char* sqlite3_errmsg(sqlite3*)
    int sqlite3_extended_errcode(sqlite3*)
    int sqlite3_busy_timeout(sqlite3*, int)
    int sqlite3_get_autocommit(sqlite3*)
    const char* sqlite3_libversion()

__all__ = ["SYNCHRONOUS", "GroupWriter", "library_address"]

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

DEF MESSAGE = 512

ctypedef const char* (*_Version)() noexcept nogil

cdef enum Kind:
    K_NULL = 0
    K_INT = 1
    K_FLOAT = 2
    K_TEXT = 3
    K_BLOB = 4

cdef struct Cell:
    int kind
    sqlite3_int64 i
    double d
    const char* p
    int n


def library_address():
    """Where ``sqlite3_libversion`` of the SQLite library this module calls lies in memory."""
    cdef _Version function = sqlite3_libversion
    return <size_t>function


cdef object _error_class(int code):
    code &= 0xFF
    if code == SQLITE_CONSTRAINT or code == SQLITE_MISMATCH:
        return _sqlite.IntegrityError
    if code == SQLITE_CORRUPT or code == SQLITE_NOTADB:
        return _sqlite.DatabaseError
    if code == SQLITE_TOOBIG:
        return _sqlite.DataError
    if code == SQLITE_MISUSE or code == SQLITE_RANGE:
        return _sqlite.InterfaceError
    if code == SQLITE_INTERNAL or code == SQLITE_NOTFOUND:
        return _sqlite.InternalError
    if code == SQLITE_NOMEM:
        return MemoryError
    return _sqlite.OperationalError


cdef object _error(int code, const char* message):
    """The sqlite3 module's exception for ``code``, with SQLite's message."""
    error = _error_class(code)((<bytes>message).decode("utf-8", "replace"))
    if isinstance(error, _sqlite.Error):
        error.sqlite_errorcode = code
    return error


cdef class _Statement:
    cdef sqlite3_stmt* st
    cdef int parameters

    def __dealloc__(self):
        if self.st != NULL:
            sqlite3_finalize(self.st)
            self.st = NULL


cdef int _fill(Cell* cell, object value, int index, list hold) except -1:
    """``value`` as a cell to bind (the sqlite3 module's types and errors). The cell points into
    a str's UTF-8 or a bytes' buffer, owned by the value, which the caller keeps alive; other
    buffers (bytearray, memoryview) are copied into bytes kept in ``hold``."""
    cdef Py_ssize_t size
    if value is None:
        cell.kind = K_NULL
    elif isinstance(value, int):
        try:
            cell.i = value
        except OverflowError:
            raise OverflowError("Python int too large to convert to SQLite INTEGER") from None
        cell.kind = K_INT
    elif isinstance(value, float):
        cell.d = value
        cell.kind = K_FLOAT
    elif isinstance(value, str):
        cell.p = PyUnicode_AsUTF8AndSize(value, &size)
        if size > 0x7FFFFFFF:
            raise OverflowError("string longer than INT_MAX bytes")
        cell.n = <int>size
        cell.kind = K_TEXT
    elif PyObject_CheckBuffer(value):
        if not isinstance(value, bytes):
            value = bytes(value)
            hold.append(value)
        size = PyBytes_GET_SIZE(value)
        if size > 0x7FFFFFFF:
            raise OverflowError("BLOB longer than INT_MAX bytes")
        cell.p = PyBytes_AS_STRING(value)
        cell.n = <int>size
        cell.kind = K_BLOB
    else:
        raise _sqlite.ProgrammingError(f"Error binding parameter {index}: type '{type(value).__name__}' is not supported")
    return 0


cdef inline int _bind(sqlite3_stmt* st, int index, Cell* cell) noexcept nogil:
    if cell.kind == K_NULL:
        return sqlite3_bind_null(st, index)
    if cell.kind == K_INT:
        return sqlite3_bind_int64(st, index, cell.i)
    if cell.kind == K_FLOAT:
        return sqlite3_bind_double(st, index, cell.d)
    if cell.kind == K_TEXT:
        return sqlite3_bind_text(st, index, cell.p, cell.n, NULL)  # SQLITE_STATIC: the value outlives the step
    return sqlite3_bind_blob(st, index, cell.p, cell.n, NULL)


cdef int _bind_step(sqlite3_stmt* st, Cell* cells, int count) noexcept nogil:
    """Bind ``count`` cells to ``st`` and run it once: SQLITE_DONE (the statement reset for its
    next use), or the code that failed."""
    cdef int c, rc
    for c in range(count):
        rc = _bind(st, c + 1, &cells[c])
        if rc != SQLITE_OK:
            return rc
    rc = sqlite3_step(st)
    if rc == SQLITE_DONE:
        sqlite3_reset(st)
    return rc


cdef int _fill_row(Cell* cells, object row, int expected, list hold) except -1:
    if not isinstance(row, (tuple, list)):
        raise _sqlite.ProgrammingError("parameters are of unsupported type")
    if len(row) != expected:
        raise _sqlite.ProgrammingError(
            f"Incorrect number of bindings supplied. The current statement uses {expected}, and there are {len(row)} supplied."
        )
    cdef int c
    for c in range(expected):
        _fill(&cells[c], row[c], c + 1, hold)
    return 0


cdef class GroupWriter:
    """A connection to the SQLite file ``path`` that appends groups: ``begin``, then ``write``
    (or ``rollback``). ``synchronous``: the PRAGMA of that name (FULL: a commit survives a power
    cut); ``busy_timeout_ms``: how long ``begin`` waits for another connection's write lock
    (0: it answers "database is locked" at once).

    One thread at a time: the caller serialises its calls. After an exception from ``begin``
    or ``write`` the transaction stays open until ``rollback``."""

    cdef sqlite3* db
    cdef dict statements
    cdef readonly str path

    def __cinit__(self):
        self.db = NULL
        self.statements = {}

    def __init__(self, str path, *, str synchronous="FULL", int busy_timeout_ms=5000):
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be 0 or more, not {busy_timeout_ms}")
        self.path = path
        encoded = path.encode("utf-8")
        cdef int rc = sqlite3_open_v2(encoded, &self.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL)
        if rc != SQLITE_OK:
            if self.db == NULL:
                raise MemoryError()
            error = _error(rc, sqlite3_errmsg(self.db))
            self.close()
            raise error
        sqlite3_busy_timeout(self.db, busy_timeout_ms)
        try:
            self._run(f"PRAGMA synchronous={synchronous}")
            self._run("PRAGMA foreign_keys=ON")
        except BaseException:  # not a usable connection: closed now, not when collected
            self.close()
            raise

    def __dealloc__(self):
        self.statements = None
        if self.db != NULL:
            sqlite3_close_v2(self.db)
            self.db = NULL

    cdef sqlite3* _open(self) except NULL:
        if self.db == NULL:
            raise _sqlite.ProgrammingError("Cannot operate on a closed database.")
        return self.db

    cdef _Statement _statement(self, str sql):
        cdef _Statement statement = self.statements.get(sql)
        cdef sqlite3* db = self._open()
        cdef const char* tail = NULL
        cdef int rc
        if statement is None:
            statement = _Statement()
            encoded = sql.encode("utf-8")
            rc = sqlite3_prepare_v2(db, encoded, <int>len(encoded), &statement.st, &tail)
            if rc != SQLITE_OK:
                raise _error(sqlite3_extended_errcode(db), sqlite3_errmsg(db))
            if statement.st == NULL:
                raise _sqlite.ProgrammingError(f"no statement in {sql!r}")
            if tail != NULL and tail[0] != 0 and (<bytes>tail).strip():
                raise _sqlite.ProgrammingError("You can only execute one statement at a time.")
            statement.parameters = sqlite3_bind_parameter_count(statement.st)
            self.statements[sql] = statement
        return statement

    cdef object _row(self, sqlite3_stmt* st):
        cdef int c, n = sqlite3_column_count(st), kind
        row = []
        for c in range(n):
            kind = sqlite3_column_type(st, c)
            if kind == SQLITE_INTEGER:
                row.append(sqlite3_column_int64(st, c))
            elif kind == SQLITE_FLOAT:
                row.append(sqlite3_column_double(st, c))
            elif kind == SQLITE_TEXT:
                row.append((<const char*>sqlite3_column_text(st, c))[: sqlite3_column_bytes(st, c)].decode("utf-8"))
            elif kind == SQLITE_BLOB:
                row.append((<const char*>sqlite3_column_blob(st, c))[: sqlite3_column_bytes(st, c)])
            else:
                row.append(None)
        return tuple(row)

    cdef _run(self, str sql):
        """Run ``sql`` (no parameters) to its end; its first row, or None."""
        cdef _Statement statement = self._statement(sql)
        cdef sqlite3_stmt* st = statement.st
        cdef sqlite3* db = self.db
        cdef int rc
        cdef char message[MESSAGE]
        first = None
        with nogil:
            rc = sqlite3_step(st)
        while rc == SQLITE_ROW:
            if first is None:
                first = self._row(st)
            with nogil:
                rc = sqlite3_step(st)
        if rc != SQLITE_DONE:
            strncpy(message, sqlite3_errmsg(db), MESSAGE - 1)
            message[MESSAGE - 1] = 0
            rc = sqlite3_extended_errcode(db)
            sqlite3_reset(st)
            raise _error(rc, message)
        sqlite3_reset(st)
        return first

    def begin(self, str select_sql):
        """BEGIN IMMEDIATE, waiting up to the busy timeout for the write lock, then the first row
        of ``select_sql`` (a tuple; None when it has none)."""
        self._run("BEGIN IMMEDIATE")
        return self._run(select_sql)

    def write(self, str insert_sql, rows, str update_sql, update_parameters):
        """Run ``insert_sql`` once per row of ``rows``, then ``update_sql`` with
        ``update_parameters``, then COMMIT: the values are taken first, and the statements run
        with the interpreter lock let go."""
        cdef _Statement insert = self._statement(insert_sql)
        cdef _Statement update = self._statement(update_sql)
        cdef _Statement commit = self._statement("COMMIT")
        cdef sqlite3* db = self.db
        keep = rows if isinstance(rows, list) else list(rows)  # the values whose buffers the cells point into
        hold = []
        cdef Py_ssize_t count = len(keep), r
        cdef int width = insert.parameters, rc = SQLITE_DONE, failed = 0
        cdef Cell* cells = <Cell*>malloc(sizeof(Cell) * (count * width + update.parameters + 1))
        cdef char message[MESSAGE]
        if cells == NULL:
            raise MemoryError()
        try:
            for r in range(count):
                _fill_row(&cells[r * width], keep[r], width, hold)
            _fill_row(&cells[count * width], update_parameters, update.parameters, hold)
            with nogil:
                for r in range(count):
                    rc = _bind_step(insert.st, &cells[r * width], width)
                    if rc != SQLITE_DONE:
                        break
                if rc == SQLITE_DONE:
                    rc = _bind_step(update.st, &cells[count * width], update.parameters)
                if rc == SQLITE_DONE:
                    rc = _bind_step(commit.st, NULL, 0)
                failed = rc != SQLITE_DONE
                if failed:
                    strncpy(message, sqlite3_errmsg(db), MESSAGE - 1)
                    message[MESSAGE - 1] = 0
                    rc = sqlite3_extended_errcode(db)
                    sqlite3_reset(insert.st)
                    sqlite3_reset(update.st)
                    sqlite3_reset(commit.st)
            if failed:
                raise _error(rc, message)
        finally:
            free(cells)

    def rollback(self):
        """Roll the open transaction back (nothing when none is open)."""
        if self.db != NULL and not sqlite3_get_autocommit(self.db):
            self._run("ROLLBACK")

    def pragma(self, str name):
        """The value of ``PRAGMA name``."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        row = self._run(f"PRAGMA {name}")
        return None if row is None else row[0]

    @property
    def in_transaction(self):
        return self.db != NULL and not sqlite3_get_autocommit(self.db)

    def close(self):
        """Close the connection (an open transaction is rolled back); again: nothing."""
        self.statements = {}  # finalizes every prepared statement
        if self.db != NULL:
            sqlite3_close_v2(self.db)
            self.db = NULL
