"""The web UI's saved conversations: a SQLite file (``$CHATFORGE_HOME/ui/conversations.sqlite3``
unless ``--conversations-db`` says otherwise), its schema migrations, and what goes wrong with it.

Each conversation belongs to an *owner*: the SHA-256 of the API key it was saved with, or ``""``
on a server that needs no key, so holders of different keys never see each other's
conversations. Messages are kept as one JSON list per conversation, exactly as the page sent
them (validated by the routes, :mod:`chatforge.serve.routes.conversations`).

The file is opened on first use, never by ``create_app``: a server that never shows its
conversations (``--no-ui``, the API alone) never creates it. A file that is not SQLite,
fails ``PRAGMA quick_check``, comes from a newer chatforge, or stays locked by another process
raises :class:`ConversationsUnavailable` naming the file and what to do; the file is left
exactly as it is, and the next call tries again (so moving a damaged file aside needs no
restart). One connection, behind a lock, serves every thread: the UI's traffic is light and
SQLite serialises writers anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from chatforge import env

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest JSON a conversation's messages may take (title and timestamps aside).
MAX_CONVERSATION_BYTES = 8 * 1024 * 1024
DEFAULT_TITLE = "New conversation"


def default_path() -> Path:
    return env.home() / "ui" / "conversations.sqlite3"


def owner_of(api_key: str | None) -> str:
    """The owner conversations saved with ``api_key`` belong to (``""``: no key)."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


class ConversationsUnavailable(Exception):
    """The database cannot be used now; the message names the file and what to do."""


class ConversationTooLarge(Exception):
    """A conversation's messages are over the store's limit."""


@dataclass
class Conversation:
    id: str
    title: str
    mode: str
    created: float
    updated: float
    messages: list[dict[str, Any]] | None = None
    """None in listings, which leave the messages out."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "mode": self.mode,
            "created": self.created,
            "updated": self.updated,
        }
        if self.messages is not None:
            out["messages"] = self.messages
        return out


Migration = Callable[[sqlite3.Connection], None]


def _v1_conversations(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            title TEXT NOT NULL,
            mode TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            messages TEXT NOT NULL  -- a JSON list
        )"""
    )
    db.execute("CREATE INDEX conversations_by_owner ON conversations (owner, updated DESC)")


#: Migration ``i`` takes the schema from version ``i`` to ``i + 1`` (``PRAGMA user_version``);
#: append only, never edit one that has shipped.
MIGRATIONS: tuple[Migration, ...] = (_v1_conversations,)


@dataclass
class ConversationStore:
    """The conversations in one SQLite file; every method may raise :class:`ConversationsUnavailable`."""

    path: Path
    busy_timeout: float = 5.0
    """Seconds to wait for another process's lock before giving up."""
    max_bytes: int = MAX_CONVERSATION_BYTES
    migrations: Sequence[Migration] = MIGRATIONS
    _db: sqlite3.Connection | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser().absolute()  # error messages name it in full

    @property
    def version(self) -> int:
        """The schema version this chatforge writes."""
        return len(self.migrations)

    # -- conversations -------------------------------------------------------------------

    def summaries(self, owner: str) -> list[Conversation]:
        """The owner's conversations without their messages, most recently updated first."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT id, title, mode, created, updated FROM conversations WHERE owner = ? "
                "ORDER BY updated DESC, rowid DESC",
                (owner,),
            ).fetchall()
        )
        return [Conversation(*row) for row in rows]

    def create(self, owner: str, title: str = DEFAULT_TITLE, mode: str = "chat") -> Conversation:
        now = time.time()
        conversation = Conversation(secrets.token_hex(16), title, mode, now, now, [])

        def insert(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO conversations (id, owner, title, mode, created, updated, messages) "
                    "VALUES (?, ?, ?, ?, ?, ?, '[]')",
                    (conversation.id, owner, title, mode, now, now),
                )

        self._run(insert)
        return conversation

    def get(self, owner: str, id: str) -> Conversation | None:
        row = self._run(
            lambda db: db.execute(
                "SELECT id, title, mode, created, updated, messages FROM conversations "
                "WHERE owner = ? AND id = ?",
                (owner, id),
            ).fetchone()
        )
        if row is None:
            return None
        try:
            messages = json.loads(row[5])
        except json.JSONDecodeError as err:  # only something other than this store writes that
            raise ConversationsUnavailable(
                f"conversation {id} in the conversations database {self.path} holds messages that "
                f"are not JSON ({err}); the others can still be opened"
            ) from err
        return Conversation(*row[:5], messages)

    def update(
        self,
        owner: str,
        id: str,
        *,
        title: str | None = None,
        mode: str | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> Conversation | None:
        """Change what is given (``messages`` replaces the whole list); None for an unknown id."""
        changes: dict[str, Any] = {}
        if title is not None:
            changes["title"] = title
        if mode is not None:
            changes["mode"] = mode
        if messages is not None:
            text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
            size = len(text.encode())
            if size > self.max_bytes:
                raise ConversationTooLarge(
                    f"the conversation's messages take {size} bytes, over the limit of {self.max_bytes}"
                )
            changes["messages"] = text
        if not changes:
            return self.get(owner, id)

        def write(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                row = db.execute(
                    "SELECT updated FROM conversations WHERE owner = ? AND id = ?", (owner, id)
                ).fetchone()
                if row is None:
                    return False
                # Never back in time, so a clock step cannot reorder the list under the user.
                changes["updated"] = max(time.time(), row[0])
                assignments = ", ".join(f"{column} = ?" for column in changes)
                db.execute(
                    f"UPDATE conversations SET {assignments} WHERE owner = ? AND id = ?",
                    (*changes.values(), owner, id),
                )
                return True

        return self.get(owner, id) if self._run(write) else None

    def delete(self, owner: str, id: str) -> bool:
        def remove(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                cursor = db.execute("DELETE FROM conversations WHERE owner = ? AND id = ?", (owner, id))
                return cursor.rowcount > 0

        return self._run(remove)

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- the file ----------------------------------------------------------------------

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._connection())
            except sqlite3.DatabaseError as err:
                # Reopened (and checked again) on the next call.
                self._discard()
                raise self._unavailable(err) from err

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConversationsUnavailable(
                    f"cannot create the directory of the conversations database {self.path}: {err}"
                ) from err
            db = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                self._prepare(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Check the file and bring its schema up to date. Nothing is written before the
        checks pass: the journal mode lives in the file's header."""
        problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            detail = " ".join("; ".join(problems).split())
            raise ConversationsUnavailable(self._damaged(detail[:300]))
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > self.version:
            raise ConversationsUnavailable(
                f"the conversations database {self.path} was written by a newer chatforge (schema "
                f"version {found}; this one knows up to {self.version}); it is left as it is: "
                "upgrade chatforge, or give this one another file with --conversations-db"
            )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        # Up to date: no write lock wanted, so a file another process is writing still opens.
        while db.execute("PRAGMA user_version").fetchone()[0] < self.version:
            with _transaction(db):
                # Read inside the write lock: another process may have migrated meanwhile.
                found = db.execute("PRAGMA user_version").fetchone()[0]
                if found >= self.version:
                    break
                self.migrations[found](db)
                db.execute(f"PRAGMA user_version = {found + 1}")
            log.info("conversations database %s: schema version %d", self.path, found + 1)

    def _discard(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _unavailable(self, err: sqlite3.DatabaseError) -> ConversationsUnavailable:
        name = getattr(err, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            message = (
                f"the conversations database {self.path} is locked by another process (waited "
                f"{self.busy_timeout:g} s); close what holds it (another chatforge serve with the same "
                "CHATFORGE_HOME?) or give this server another file with --conversations-db"
            )
        elif name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            message = self._damaged(str(err))
        else:
            message = f"the conversations database {self.path} cannot be used: {err}"
        log.warning("%s", message)
        return ConversationsUnavailable(message)

    def _damaged(self, detail: str) -> str:
        return (
            f"the conversations database {self.path} is damaged or not a SQLite database ({detail}); "
            "chatforge leaves it untouched: move it aside (a new one is made on the next request) "
            "or restore a backup. Chat works meanwhile, but conversations cannot be saved."
        )


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception (the connection is in
    autocommit mode, so each write says where its transaction starts)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")
