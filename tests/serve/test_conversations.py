"""The web UI's saved conversations: the SQLite store itself (migrations, a newer schema, a
damaged or locked file, owners, size limit, threads), then its routes through a real server
on loopback (create, list, get, rename, save messages, export, delete; keys; restarts; a
damaged file answered with 503 while chat keeps working)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from chatforge.serve.conversations import (
    MIGRATIONS,
    ConversationStore,
    ConversationsUnavailable,
    ConversationTooLarge,
    owner_of,
)


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[1] for row in db.execute("PRAGMA table_info(conversations)")]


def damaged_database(path: Path) -> bytes:
    """A real conversations database whose table page's cell pointers are overwritten; its bytes."""
    store = ConversationStore(path)
    for i in range(40):
        c = store.create("o", f"t{i}")
        store.update("o", c.id, messages=[{"role": "user", "content": "x" * 3000}])
    store.close()
    data = bytearray(path.read_bytes())
    data[2 * 4096 + 8 : 2 * 4096 + 88] = b"\xff" * 80  # pointers past the page's end
    path.write_bytes(bytes(data))
    return bytes(data)


# -- the store ---------------------------------------------------------------------------


@pytest.mark.parametrize("empty_file", [False, True])
def test_a_missing_or_empty_file_gets_the_current_schema(tmp_path, empty_file):
    path = tmp_path / "ui" / "c.sqlite3"
    if empty_file:
        path.parent.mkdir()
        path.touch()
    store = ConversationStore(path)
    assert not path.exists() or path.stat().st_size == 0  # nothing happens before first use
    created = store.create("", "hello", "code")
    assert len(created.id) == 32 and int(created.id, 16) >= 0
    assert [c.as_dict() for c in store.summaries("")] == [
        {k: v for k, v in created.as_dict().items() if k != "messages"}
    ]
    store.close()
    assert user_version(path) == len(MIGRATIONS) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_apply_in_order_one_transaction_each(tmp_path):
    path = tmp_path / "c.sqlite3"
    store = ConversationStore(path)
    kept = store.create("o", "kept")
    store.close()
    assert user_version(path) == 1

    def add_pinned(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    def broken(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE conversations ADD COLUMN half INTEGER")
        db.execute("SELECT * FROM no_such_table")

    # A migration that fails leaves the schema of the version before it.
    failing = ConversationStore(path, migrations=(*MIGRATIONS, add_pinned, broken))
    with pytest.raises(ConversationsUnavailable, match="no such table"):
        failing.summaries("o")
    assert user_version(path) == 2 and "pinned" in columns(path) and "half" not in columns(path)

    upgraded = ConversationStore(path, migrations=(*MIGRATIONS, add_pinned, lambda db: None))
    assert [c.id for c in upgraded.summaries("o")] == [kept.id]
    upgraded.close()
    assert user_version(path) == 3


def test_a_database_from_a_newer_chatforge_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "c.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE future (x)")
        db.execute("PRAGMA user_version = 7")
    db.close()
    before = path.read_bytes()
    with pytest.raises(
        ConversationsUnavailable, match=r"newer chatforge \(schema version 7; this one knows up to 1\)"
    ):
        ConversationStore(path).summaries("")
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["not sqlite", "damaged page"])
def test_a_damaged_file_is_reported_and_never_touched(tmp_path, kind):
    path = tmp_path / "c.sqlite3"
    if kind == "not sqlite":
        before = b"this is not a database\n" * 500
        path.write_bytes(before)
    else:
        before = damaged_database(path)
    store = ConversationStore(path)
    for attempt in range(2):  # tried again on each call, never repaired or replaced
        with pytest.raises(ConversationsUnavailable) as err:
            store.create("o") if attempt else store.summaries("o")
        assert str(path) in str(err.value) and "move it aside" in str(err.value)
    store.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite3"]
    # Moved aside, a new file is made on the next call, without a restart.
    path.rename(tmp_path / "damaged.sqlite3")
    assert store.create("o").title == "New conversation"


def test_a_locked_file_is_reported_within_the_busy_timeout(tmp_path):
    path = tmp_path / "c.sqlite3"
    first = ConversationStore(path)
    first.create("o")  # the file exists, in WAL mode
    first.close()

    # Another process holding a write transaction: reads go on, a write waits, then gives up.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store = ConversationStore(path, busy_timeout=0.3)
    assert len(store.summaries("o")) == 1
    started = time.monotonic()
    with pytest.raises(
        ConversationsUnavailable, match=r"is locked by another process \(waited 0.3 s\)"
    ) as err:
        store.create("o")
    assert time.monotonic() - started < 5 and str(path) in str(err.value)
    holder.execute("ROLLBACK")
    assert store.create("o")  # let go: works again

    # A holder in exclusive locking mode blocks reads too, the first open included.
    store.close()
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE conversations SET title = 'x'")
    with pytest.raises(ConversationsUnavailable, match="locked by another process"):
        ConversationStore(path, busy_timeout=0.2).summaries("o")
    holder.close()


def test_owners_see_only_their_own_conversations(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    alice, bob = owner_of("key-a"), owner_of("key-b")
    assert len(alice) == 64 and alice != bob and owner_of(None) == owner_of("") == ""
    mine = store.create(alice, "mine")
    assert store.summaries(bob) == [] and store.summaries("") == []
    assert store.get(bob, mine.id) is None
    assert store.update(bob, mine.id, title="stolen") is None
    assert store.delete(bob, mine.id) is False
    assert store.get(alice, mine.id).title == "mine"
    store.close()


def test_updates_reorder_the_list_and_sizes_are_capped(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3", max_bytes=1000)
    first, second = store.create("o", "first"), store.create("o", "second")
    assert [c.title for c in store.summaries("o")] == ["second", "first"]
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "hi", "meta": {"tps": 3}},
    ]
    updated = store.update("o", first.id, title="renamed", messages=messages)
    assert updated.messages == messages and updated.mode == "chat" and updated.updated >= first.updated
    assert [c.title for c in store.summaries("o")] == ["renamed", "second"]
    with pytest.raises(ConversationTooLarge, match="over the limit of 1000"):
        store.update("o", second.id, messages=[{"role": "user", "content": "x" * 1000}])
    assert store.get("o", second.id).messages == []
    assert store.delete("o", second.id) and store.get("o", second.id) is None
    store.close()


def test_threads_share_one_store(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                c = store.create("o", f"{n}-{i}")
                store.update("o", c.id, messages=[{"role": "user", "content": str(i)}])
                store.summaries("o")
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.summaries("o")) == 90
    store.close()
    assert os.path.exists(tmp_path / "c.sqlite3")
