"""The SQLite group writer: the compiled one stores what its twin stores, and raises the
sqlite3 module's error, with the same message, for the same mistake."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.fastpath import _select, _sqlite_group_py, sqlite_group

try:
    from lockgate.fastpath import _sqlite_group as _sqlite_group_c
except ImportError:  # pragma: no cover - the compiled module is required in CI (test below)
    _sqlite_group_c = None

IMPLS = [pytest.param(_sqlite_group_py, id="python")]
if _sqlite_group_c is not None:
    IMPLS.append(pytest.param(_sqlite_group_c, id="cython"))
needs_compiled = pytest.mark.skipif(_sqlite_group_c is None, reason="the compiled group writer is not built")

HEAD = "SELECT seq, hash FROM head WHERE id = 1"
INSERT = "INSERT INTO records (seq, at, kind, version, body) VALUES (?, ?, ?, ?, ?)"
UPDATE = "UPDATE head SET seq = ?, hash = ? WHERE id = 1"


def make_db(path: Path) -> str:
    """A store shaped like the audit log's: records with a unique seq, and a head row."""
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT, version INTEGER, body)")
        c.execute("CREATE TABLE head (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL)")
        c.execute("INSERT INTO head VALUES (1, 0, 'genesis')")
    return str(path)


def stored(path: str) -> tuple[list[tuple], tuple]:
    with sqlite3.connect(path) as c:
        records = c.execute("SELECT seq, at, kind, version, body, typeof(body) FROM records ORDER BY seq").fetchall()
        head = c.execute(HEAD).fetchone()
    return records, head


@pytest.mark.parametrize("impl", IMPLS)
def test_a_group_is_inserted_with_the_head_moved_in_one_commit(impl, tmp_path):
    path = make_db(tmp_path / "a.db")
    writer = impl.GroupWriter(path, busy_timeout_ms=1000)
    assert writer.path == path
    assert writer.begin(HEAD) == (0, "genesis") and writer.in_transaction
    rows = [(1, 1.5, "infer", 3, "one"), (2, 2.5, "infer", None, b"\x00two")]
    writer.write(INSERT, rows, UPDATE, (2, "h2"))
    assert not writer.in_transaction
    assert stored(path) == ([(1, 1.5, "infer", 3, "one", "text"), (2, 2.5, "infer", None, b"\x00two", "blob")], (2, "h2"))
    assert writer.begin(HEAD) == (2, "h2")  # the next group sees what the last one wrote
    writer.write(INSERT, [], UPDATE, (2, "h2-again"))  # a group may be empty: the head still moves
    assert stored(path)[1] == (2, "h2-again")
    writer.close()
    writer.close()  # again: nothing
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        writer.begin(HEAD)


def outcome(impl, path: str, rows, update=(9, "h")) -> tuple:
    """What writing ``rows`` as one group gives: what is stored, or the error (type and text)
    and what is stored after ``rollback``."""
    writer = impl.GroupWriter(path, busy_timeout_ms=1000)
    try:
        writer.begin(HEAD)
        writer.write(INSERT, rows, UPDATE, update)
        return "ok", stored(path)
    except Exception as e:  # noqa: BLE001 - compared
        writer.rollback()
        assert not writer.in_transaction
        return "err", type(e), str(e), stored(path)
    finally:
        writer.close()


MISTAKES = {
    "unsupported type": [(1, 1.0, "k", [3], "b")],
    "a dict": [(1, 1.0, "k", {"v": 3}, "b")],
    "too many values": [(1, 1.0, "k", 3, "b", "extra")],
    "too few values": [(1, 1.0, "k")],
    "a row that is not a sequence": [42],
    "int too large": [(1, 1.0, "k", 2**63, "b")],
    "lone surrogate": [(1, 1.0, "k\ud800", 3, "b")],
    "duplicate seq": [(1, 1.0, "k", 3, "b"), (1, 2.0, "k", 3, "b")],
    "NULL where NOT NULL": [(1, None, "k", 3, "b")],
    "a good row, then a bad one": [(1, 1.0, "k", 3, "b"), (2, 2.0, "k", object(), "b")],
}


@needs_compiled
@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_a_mistake_raises_what_the_twin_raises_and_writes_nothing(name, tmp_path):
    rows = MISTAKES[name]
    compiled = outcome(_sqlite_group_c, make_db(tmp_path / "c.db"), rows)
    twin = outcome(_sqlite_group_py, make_db(tmp_path / "p.db"), rows)
    assert compiled == twin
    assert compiled[0] == "err" and compiled[-1] == ([], (0, "genesis")), compiled


@needs_compiled
def test_update_parameters_and_statements_are_checked_like_the_twin(tmp_path):
    cases = [
        (INSERT, (9,)),  # too few values for the head's update
        ("INSERT INTO nowhere VALUES (?)", (9, "h")),  # no such table
        ("INSERT INTO records (seq, at) VALUES (1, 1.0); SELECT 1", (9, "h")),  # two statements
    ]
    for i, (insert, update) in enumerate(cases):
        results = []
        for impl in (_sqlite_group_c, _sqlite_group_py):
            path = make_db(tmp_path / f"{i}-{impl.__name__}.db")
            writer = impl.GroupWriter(path)
            writer.begin(HEAD)
            try:
                writer.write(insert if insert != INSERT else INSERT, [] if insert == INSERT else [()], UPDATE, update)
                results.append(("ok", stored(path)))
            except Exception as e:  # noqa: BLE001 - compared
                writer.rollback()
                results.append(("err", type(e), str(e), stored(path)))
            writer.close()
        assert results[0] == results[1], (insert, update)
        assert results[0][0] == "err"


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
)


@needs_compiled
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False), values, values), max_size=12))
def test_any_group_of_values_is_stored_as_the_twin_stores_it(tmp_path_factory, group):
    folder = tmp_path_factory.mktemp("group")
    rows = [(seq, at, kind, version, body) for seq, (at, kind, body) in enumerate(group, 1) for version in [seq]]
    compiled = outcome(_sqlite_group_c, make_db(folder / "c.db"), rows)
    twin = outcome(_sqlite_group_py, make_db(folder / "p.db"), rows)
    assert compiled == twin


@pytest.mark.parametrize("impl", IMPLS)
def test_buffers_are_stored_as_blobs(impl, tmp_path):
    path = make_db(tmp_path / "b.db")
    rows = [(1, 1.0, "k", 1, bytearray(b"ab")), (2, 2.0, "k", True, memoryview(b"cd")), (3, 3.0, "", -5, "")]
    assert outcome(impl, path, rows) == (
        "ok",
        ([(1, 1.0, "k", 1, b"ab", "blob"), (2, 2.0, "k", 1, b"cd", "blob"), (3, 3.0, "", -5, "", "text")], (9, "h")),
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_another_connections_write_lock_is_waited_for_or_answered_at_once(impl, tmp_path):
    path = make_db(tmp_path / "lock.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE head SET seq = 7, hash = 'held' WHERE id = 1")
    at_once = impl.GroupWriter(path, busy_timeout_ms=0)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        at_once.begin(HEAD)
    assert not at_once.in_transaction

    waiting = impl.GroupWriter(path, busy_timeout_ms=30_000)
    released = threading.Event()

    def release() -> None:
        released.wait(10)
        holder.execute("COMMIT")

    thread = threading.Thread(target=release)
    thread.start()
    released.set()
    try:
        assert waiting.begin(HEAD) == (7, "held")  # it waited for the holder's commit, then read it
        waiting.write(INSERT, [(8, 1.0, "k", 1, "b")], UPDATE, (8, "mine"))
    finally:
        thread.join()
    assert stored(path)[1] == (8, "mine")
    assert at_once.begin(HEAD) == (8, "mine")  # the lock is free now
    at_once.rollback()
    for writer in (at_once, waiting):
        writer.close()
    holder.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_synchronous_is_set_as_asked(impl, tmp_path):
    path = make_db(tmp_path / "s.db")
    assert impl.GroupWriter(path, synchronous="FULL").pragma("synchronous") == 2
    assert impl.GroupWriter(path, synchronous="NORMAL").pragma("synchronous") == 1
    assert impl.GroupWriter(path).pragma("foreign_keys") == 1
    with pytest.raises(ValueError, match="synchronous must be one of"):
        impl.GroupWriter(path, synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        impl.GroupWriter(path, busy_timeout_ms=-1)
    with pytest.raises(ValueError, match="not a pragma name"):
        impl.GroupWriter(path).pragma("synchronous; DROP TABLE head")


@pytest.mark.parametrize("impl", IMPLS)
def test_a_path_that_cannot_be_opened_raises_the_sqlite3_error(impl, tmp_path):
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        impl.GroupWriter(str(tmp_path / "no" / "such" / "folder" / "x.db"))


def _open_descriptors(path: Path) -> int:
    """This process's file descriptors open on ``path``."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("no /proc/self/fd here: open descriptors cannot be counted")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return count


@pytest.mark.parametrize("impl", IMPLS)
def test_a_file_that_is_not_a_database_raises_the_sqlite3_error_and_is_closed_at_once(impl, tmp_path):
    """The settings fail on a file that is not a database: the connection is closed when the
    error is raised, not when the half-built writer is collected (the traceback still holds it)."""
    path = tmp_path / "text.db"
    path.write_bytes(b"not a database, only text that is longer than SQLite's header of a hundred bytes " * 4)
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database") as raised:
        impl.GroupWriter(str(path))
    assert raised.traceback  # the frames, and the writer in them, are alive here
    assert _open_descriptors(path) == 0


def test_a_compiled_writer_that_links_another_sqlite_than_the_sqlite3_module_is_not_loaded(monkeypatch):
    """Two copies of SQLite in one process do not see each other's locks on a file: the twin
    loads instead."""
    monkeypatch.setattr(_sqlite_group_py, "library_address", lambda: -1)
    module, chosen = _select._load_sqlite_group()
    assert (module, chosen) == (_sqlite_group_py, "python")


@needs_compiled
def test_the_compiled_writer_calls_the_sqlite3_modules_library():
    assert _sqlite_group_c.library_address() == _sqlite_group_py.library_address() is not None


@pytest.mark.skipif(
    os.environ.get("LOCKGATE_REQUIRE_COMPILED") != "1",
    reason="LOCKGATE_REQUIRE_COMPILED is not 1 (CI sets it): the twin may be what loaded",
)
def test_compiled_group_writer_is_loaded_when_required():
    assert sqlite_group.IMPLEMENTATION == "cython"
    assert _sqlite_group_c is not None and _sqlite_group_c.__file__.endswith(".so")
    assert sqlite_group.GroupWriter is _sqlite_group_c.GroupWriter


def test_environment_variable_selects_the_twin():
    code = "from lockgate.fastpath import sqlite_group as g; print(g.IMPLEMENTATION, g.GroupWriter.__module__)"
    env = {**os.environ, "LOCKGATE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "lockgate.fastpath._sqlite_group_py"]
