"""The web UI's saved conversations: the SQLite store itself (migrations, a newer schema, a
damaged or locked file, owners, size limit, threads), then its routes through a real server
on loopback (create, list, get, rename, save messages, export, delete; keys; restarts; a
damaged file answered with 503 while chat keeps working)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from chatforge.cli.commands import build_parser
from chatforge.cli.serve import settings_from_args
from chatforge.serve.app import create_app
from chatforge.serve.conversations import (
    MIGRATIONS,
    Conversation,
    ConversationStore,
    ConversationsUnavailable,
    ConversationTooLarge,
    owner_of,
)
from chatforge.serve.in_process import serve_in_thread
from chatforge.serve.routes.conversations import to_markdown
from chatforge.serve.settings import ServeSettings


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


def test_a_conversation_whose_messages_are_not_json_is_reported_alone(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    bad, good = store.create("o", "bad"), store.create("o", "good")
    with sqlite3.connect(tmp_path / "c.sqlite3") as db:
        db.execute("UPDATE conversations SET messages = '[{' WHERE id = ?", (bad.id,))
    db.close()
    with pytest.raises(ConversationsUnavailable, match=f"conversation {bad.id} .* not JSON"):
        store.get("o", bad.id)
    assert store.get("o", good.id).messages == [] and len(store.summaries("o")) == 2
    store.close()


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


# -- the routes, through a real server -----------------------------------------------------

IMAGE = base64.b64encode(b"\x89PNG not really" * 50).decode()
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in 北京?"},
    {
        "role": "assistant",
        "content": "Sunny, 25 °C.",
        "steps": [
            {"type": "tool_call", "id": "c1", "name": "get_weather", "arguments": {"city_name": "北京"}},
            {
                "type": "tool_result",
                "id": "c1",
                "name": "get_weather",
                "content": "sunny 25",
                "is_error": False,
            },
            {"type": "code", "code": "print('```')"},
            {"type": "output", "text": "```\n", "error": False},
            {"type": "image", "png": IMAGE},
        ],
        "meta": {"tokens_per_second": 12.5, "mode": "tools"},
    },
]


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@contextlib.contextmanager
def served(model, **settings) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(model, ServeSettings(**settings))
    with serve_in_thread(app) as url:
        yield url, app


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_create_list_get_rename_save_export_delete(tiny_chat, home):
    with served(tiny_chat) as (url, app), httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/ui/config").json()["conversations"] is True
        assert http.get("/ui/conversations").json() == {"conversations": []}
        first = http.post("/ui/conversations").json()
        assert re.fullmatch(r"[0-9a-f]{32}", first["id"])
        assert first | {"created": 0, "updated": 0} == {
            "id": first["id"], "title": "New conversation", "mode": "chat", "created": 0, "updated": 0,
            "messages": [],
        }  # fmt: skip
        second = http.post("/ui/conversations", json={"title": "Weather", "mode": "tools"}).json()
        assert (second["title"], second["mode"]) == ("Weather", "tools")
        assert [c["id"] for c in http.get("/ui/conversations").json()["conversations"]] == [
            second["id"],
            first["id"],
        ]

        renamed = http.put(
            f"/ui/conversations/{first['id']}", json={"title": "Weather in 北京", "mode": "tools"}
        )
        assert renamed.status_code == 200 and renamed.json()["title"] == "Weather in 北京"
        saved = http.put(f"/ui/conversations/{first['id']}", json={"messages": MESSAGES}).json()
        assert saved["messages"] == MESSAGES and saved["updated"] >= saved["created"]
        got = http.get(f"/ui/conversations/{first['id']}").json()
        assert got == saved and got["mode"] == "tools"
        listed = http.get("/ui/conversations").json()["conversations"]
        assert listed[0] == {k: v for k, v in got.items() if k != "messages"}

        exported = http.get(f"/ui/conversations/{first['id']}/export", params={"format": "json"})
        assert exported.headers["content-type"].startswith("application/json")
        disposition = exported.headers["content-disposition"]
        assert disposition.startswith(f'attachment; filename="Weather-in-{first["id"][:8]}.json"')
        assert "filename*=UTF-8''Weather%20in%20%E5%8C%97%E4%BA%AC-" in disposition
        assert exported.json() == got

        markdown = http.get(f"/ui/conversations/{first['id']}/export?format=markdown")
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert markdown.headers["content-disposition"].startswith("attachment; filename=")
        text = markdown.text
        assert text.startswith("# Weather in 北京\n")
        assert "**System:**\n\nBe brief." in text and "**User:**\n\nWeather in 北京?" in text
        assert "**Assistant:**" in text and text.rstrip().endswith("Sunny, 25 °C.")
        assert 'Tool call `get_weather`:\n\n```json\n{\n  "city_name": "北京"\n}\n```' in text
        assert "Tool result `get_weather`:\n\n```\nsunny 25\n```" in text
        assert "````python\nprint('```')\n````" in text  # a fence the code cannot close
        assert "*[image: image-1.png]*" in text and IMAGE[:40] not in text

        assert http.delete(f"/ui/conversations/{second['id']}").json() == {"deleted": True}
        for method in ("GET", "PUT", "DELETE"):
            gone = http.request(method, f"/ui/conversations/{second['id']}", json={"title": "x"})
            assert gone.status_code == 404 and error_of(gone)["code"] == "conversation_not_found"
        assert [c["id"] for c in http.get("/ui/conversations").json()["conversations"]] == [first["id"]]
    assert (home / "ui" / "conversations.sqlite3").is_file()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
            "messages[1].role",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a", "steps": "no"}]}, "messages[0].steps"),
        ({"messages": [{"role": "user", "content": "a", "extra": 1}]}, "messages[0].extra"),
        ({"title": "x" * 201}, "title"),
        ({"mode": "agent"}, "mode"),
        ({"messages": {}}, "messages"),
    ],
)
def test_bad_input_is_refused_naming_the_field(tiny_chat, home, body, param):
    with served(tiny_chat) as (url, _), httpx.Client(base_url=url, timeout=30) as http:
        conversation = http.post("/ui/conversations").json()
        response = http.put(f"/ui/conversations/{conversation['id']}", json=body)
        assert response.status_code == 400, response.text
        assert error_of(response)["param"] == param and error_of(response)["message"].startswith(param)
        assert http.get(f"/ui/conversations/{conversation['id']}").json() == conversation


def test_sizes_and_formats_have_limits(tiny_chat, home):
    with served(tiny_chat) as (url, app), httpx.Client(base_url=url, timeout=30) as http:
        app.state.server.ui.conversations.max_bytes = 4096
        conversation = http.post("/ui/conversations").json()
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        response = http.put(f"/ui/conversations/{conversation['id']}", json=big)
        assert response.status_code == 413 and error_of(response)["code"] == "conversation_too_large"
        response = http.post("/ui/conversations", json={"title": "t" * 201})
        assert response.status_code == 400 and error_of(response)["param"] == "title"
        response = http.get(f"/ui/conversations/{conversation['id']}/export?format=pdf")
        assert response.status_code == 400 and error_of(response)["param"] == "format"


def test_each_key_sees_its_own_conversations_and_they_outlive_the_server(tiny_chat, home):
    with served(tiny_chat, api_key="key-a") as (url, _):
        assert httpx.get(f"{url}/ui/conversations").status_code == 401
        kept = httpx.post(f"{url}/ui/conversations", json={"title": "kept"}, headers=bearer("key-a")).json()
    # A new server on the same CHATFORGE_HOME: the conversation is still there for its key only.
    with served(tiny_chat, api_key="key-a") as (url, _):
        listed = httpx.get(f"{url}/ui/conversations", headers=bearer("key-a")).json()["conversations"]
        assert [c["title"] for c in listed] == ["kept"]
    for key in ("key-b", None):
        with served(tiny_chat, api_key=key) as (url, _):
            assert httpx.get(f"{url}/ui/conversations", headers=bearer(key)).json() == {"conversations": []}
            response = httpx.get(f"{url}/ui/conversations/{kept['id']}", headers=bearer(key))
            assert response.status_code == 404 and error_of(response)["code"] == "conversation_not_found"
            assert (
                httpx.delete(f"{url}/ui/conversations/{kept['id']}", headers=bearer(key)).status_code == 404
            )


def test_the_file_is_made_on_first_use_only_and_never_without_the_ui(tiny_chat, home, tmp_path):
    path = home / "ui" / "conversations.sqlite3"
    with served(tiny_chat, ui=False) as (url, _):
        assert httpx.get(f"{url}/ui/conversations").status_code == 404
        assert httpx.get(f"{url}/health").status_code == 200
    with served(tiny_chat) as (url, _):
        assert httpx.get(f"{url}/ui/config").status_code == 200
    assert not path.exists()
    elsewhere = tmp_path / "elsewhere" / "mine.sqlite3"
    with served(tiny_chat, conversations_db=elsewhere) as (url, _):
        assert httpx.post(f"{url}/ui/conversations").status_code == 200
    assert elsewhere.is_file() and not path.exists()


def test_the_flag_names_the_file():
    args = build_parser().parse_args(["serve", "--model", "m", "--conversations-db", "~/c.sqlite3"])
    assert settings_from_args(args).conversations_db == Path("~/c.sqlite3").expanduser()
    assert settings_from_args(build_parser().parse_args(["serve", "--model", "m"])).conversations_db is None


def test_a_damaged_database_answers_503_while_chat_goes_on(tiny_chat, home):
    path = home / "ui" / "conversations.sqlite3"
    path.parent.mkdir(parents=True)
    before = b"SQLite format 2\x00 but not really\n" * 200
    path.write_bytes(before)
    with served(tiny_chat) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        for method, route in (
            ("GET", "/ui/conversations"),
            ("POST", "/ui/conversations"),
            ("GET", "/ui/conversations/x"),
        ):
            response = http.request(method, route)
            assert response.status_code == 503, response.text
            assert error_of(response)["code"] == "conversations_unavailable"
            assert (
                str(path) in error_of(response)["message"]
                and "move it aside" in error_of(response)["message"]
            )
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"
        assert http.get("/ui/config").status_code == 200 and http.get("/").status_code == 200
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_markdown_fences_outgrow_the_backticks_inside():
    conversation = Conversation("a" * 32, "t", "code", 0, 0, [
        {"role": "assistant", "content": "done", "steps": [
            {"type": "output", "text": "`````"},
            {"type": "something_new", "png": IMAGE, "note": "kept"},
            {"type": "error", "message": "the\nkernel died"},
        ]},
    ])  # fmt: skip
    text = to_markdown(conversation)
    assert "``````\n`````\n``````" in text
    assert '"note": "kept"' in text and f'"png": "<{len(IMAGE)} characters of base64 left out>"' in text
    assert "> Error: the kernel died" in text
