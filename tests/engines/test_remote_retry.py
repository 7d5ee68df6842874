"""The remote engine's retries, against a real HTTP server on 127.0.0.1 that the tests stop,
start again and script: down at first, 429/503 with ``Retry-After``, down for good, and a
stream cut after tokens arrived. Waits are a few tenths of a second, so the file runs in
a few seconds; timing checks are only lower bounds taken from ``Retry-After``."""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatforge.engines.base import EngineError, SamplingParams
from chatforge.engines.remote import RemoteEngine, retry_after_seconds

Reply = Callable[[BaseHTTPRequestHandler], None]
PROMPT = [5, 6, 7]
PARAMS = SamplingParams(do_sample=False, max_new_tokens=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events(pieces: list[str], finish: str | None = "stop") -> list[bytes]:
    out = [{"choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in pieces]
    if finish:
        out.append({"choices": [{"index": 0, "text": "", "finish_reason": finish}]})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in out]


def stream(pieces: list[str]) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        body = b"".join(events(pieces)) + b"data: [DONE]\n\n"
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def status(code: int, retry_after: str | Callable[[], str] | None = None) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"error": {"message": f"scripted {code}"}}).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            handler.send_header("Retry-After", retry_after() if callable(retry_after) else retry_after)
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def cut_mid_chunk(pieces: list[str]) -> Reply:
    """Chunked events, then the connection dropped halfway through a chunk (a crash)."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for event in events(pieces, finish=None):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        handler.wfile.write(b"400\r\ndata: {")  # promises 1024 bytes, sends 7
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True

    return reply


def ended_early(pieces: list[str]) -> Reply:
    """Events, then a clean end of the body with no finish_reason and no [DONE] (a proxy)."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")  # no length: the body ends when we close
        handler.end_headers()
        handler.wfile.write(b"".join(events(pieces, finish=None)))
        handler.close_connection = True

    return reply


class Upstream:
    """An OpenAI-compatible server on 127.0.0.1 that can be stopped and started again on
    the same port. ``/v1/completions`` answers with ``script`` in order, then ``default``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.script: list[Reply] = []
        self.default: Reply = stream(["Hello", ", how", " are you"])
        self.requests: list[tuple[float, str]] = []  # (time.monotonic(), path) as they arrive
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []

    def posts(self) -> list[float]:
        return [t for t, path in self.requests if path == "/v1/completions"]

    def start(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: stop() must cut live connections too

            def setup(self) -> None:
                super().setup()
                upstream._connections.append(self.connection)

            def do_GET(self) -> None:  # noqa: N802
                upstream.requests.append((time.monotonic(), self.path))
                body = json.dumps({"data": [{"id": "m1", "max_model_len": 4096}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                upstream.requests.append((time.monotonic(), self.path))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with upstream._lock:
                    reply = upstream.script.pop(0) if upstream.script else upstream.default
                reply(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)  # SO_REUSEADDR: same port again
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self._server = server

    def start_in(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.start)
        timer.start()
        return timer

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in self._connections:  # as a process that exits would
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        self._connections.clear()


@pytest.fixture()
def upstream():
    server = Upstream()
    yield server
    server.stop()


def quick(upstream: Upstream, tokenizer, **kwargs) -> RemoteEngine:
    """An engine with test-sized waits: tries come hundredths of a second apart."""
    options = {"backoff": 0.01, "max_wait": 2.0, "max_tries": 4, **kwargs}
    return RemoteEngine(upstream.url, tokenizer, **options)


def text_of(engine: RemoteEngine) -> str:
    return "".join(c.text for c in engine.stream(PROMPT, PARAMS))


def test_a_server_down_at_first_is_waited_for_and_one_restarting_too(upstream, tiny_tokenizer, caplog):
    caplog.set_level(logging.WARNING, logger="chatforge.engines.remote")
    timer = upstream.start_in(0.3)
    # Waits of at least 0.025, 0.05, 0.1, 0.2, 0.4 s: up within the first five.
    engine = quick(upstream, tiny_tokenizer, backoff=0.05, max_tries=10)
    timer.join()
    assert engine.model == "m1"
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert retries and all(f"{upstream.url}/v1/models" in m and "ConnectError" in m for m in retries)
    assert "try 2 of 10 in" in retries[0]

    assert text_of(engine) == "Hello, how are you"
    upstream.stop()  # a restart between two requests: the next one waits for it
    caplog.clear()
    timer = upstream.start_in(0.3)
    assert text_of(engine) == "Hello, how are you"
    timer.join()
    assert len(upstream.posts()) == 2  # refused connections never reached the server
    assert any("/v1/completions" in r.getMessage() for r in caplog.records)
    engine.close()


def test_retry_after_is_honoured(upstream, tiny_tokenizer, caplog):
    caplog.set_level(logging.WARNING, logger="chatforge.engines.remote")
    upstream.start()
    engine = quick(upstream, tiny_tokenizer, backoff=0.001)  # waits come from Retry-After alone

    def in_two_seconds() -> str:  # an HTTP-date, written when the answer is
        return email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)

    upstream.script = [status(429, "0.3"), status(503, "0.4"), status(503, in_two_seconds)]
    assert text_of(engine) == "Hello, how are you"
    posts = upstream.posts()
    assert len(posts) == 4
    gaps = [b - a for a, b in zip(posts, posts[1:])]
    # HTTP-dates have whole seconds, so the last wait is between 1 and 2 s.
    assert gaps[0] >= 0.3 and gaps[1] >= 0.4 and gaps[2] >= 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert "HTTP 429" in messages[0] and "in 0.30 s" in messages[0]
    assert "HTTP 503" in messages[1] and "in 0.40 s" in messages[1]
    engine.close()


def test_a_retry_after_longer_than_max_wait_ends_the_tries_at_once(upstream, tiny_tokenizer):
    upstream.start()
    engine = quick(upstream, tiny_tokenizer, max_wait=5.0)
    upstream.script = [status(503, "120")]
    with pytest.raises(EngineError, match=r"after 1 try it asked to wait 120 s \(Retry-After\)"):
        text_of(engine)
    assert len(upstream.posts()) == 1
    engine.close()


def test_giving_up_names_the_url_the_tries_and_the_last_failure(upstream, tiny_tokenizer):
    # Nobody listens on the port: every try is refused.
    with pytest.raises(EngineError) as down:
        quick(upstream, tiny_tokenizer, max_tries=3)
    message = str(down.value)
    assert f"{upstream.url}/v1/models" in message and "after 3 tries" in message
    assert "ConnectError" in message

    upstream.start()
    engine = quick(upstream, tiny_tokenizer, max_tries=3)
    upstream.default = status(503)
    with pytest.raises(
        EngineError, match=r"/v1/completions: gave up after 3 tries.*HTTP 503: .*scripted 503"
    ):
        text_of(engine)
    assert len(upstream.posts()) == 3

    upstream.default = status(400)  # a refusal, not a hiccup: one request, no retries
    with pytest.raises(EngineError, match="answered HTTP 400"):
        text_of(engine)
    assert len(upstream.posts()) == 4
    engine.close()


@pytest.mark.parametrize("break_", [cut_mid_chunk, ended_early], ids=["connection-cut", "ended-early"])
def test_a_stream_broken_after_tokens_is_not_sent_again(upstream, tiny_tokenizer, break_):
    upstream.start()
    engine = quick(upstream, tiny_tokenizer)
    upstream.script = [break_(["Hello", ", how"])]
    received = []
    with pytest.raises(EngineError, match=r"broke after [1-9]\d* tokens .*not retried") as broken:
        for chunk in engine.stream(PROMPT, PARAMS):
            received.append(chunk.text)
    assert f"{upstream.url}/v1/completions" in str(broken.value)
    assert "".join(received) in ("", "Hello", "Hello, how")  # the caller may have text already
    assert len(upstream.posts()) == 1
    engine.close()


def test_retry_after_values():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(" 0.25 ", now) == 0.25
    assert retry_after_seconds("Wed, 01 Jan 2025 12:00:07 GMT", now) == 7.0
    assert retry_after_seconds("Wed, 01 Jan 2025 11:59:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("-4", now) == 0.0
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(unreadable, now) is None


def test_the_cli_flags_reach_the_engine(upstream, tiny_tokenizer, tmp_path, monkeypatch):
    from chatforge import chat
    from chatforge.cli import args as cli_args
    from chatforge.cli import commands as cli
    from chatforge.engines.select import build_engine

    flags = ["--remote-max-tries", "7", "--remote-backoff", "0.2", "--remote-connect-timeout", "3"]
    flags += ["--remote-read-timeout", "60"]
    seen: dict = {}
    monkeypatch.setattr(chat, "load_model", lambda ref, **kw: seen.update(kw))
    cli_args.load_from_args(cli.build_parser().parse_args(["chat", "--remote-url", upstream.url, *flags]))
    options = seen["engine_options"]
    assert options == {"max_tries": 7, "backoff": 0.2, "connect_timeout": 3.0, "read_timeout": 60.0}
    # An engine that is not the remote one never sees them.
    cli_args.load_from_args(
        cli.build_parser().parse_args(
            ["chat", "--engine", "transformers", "--remote-url", upstream.url, *flags]
        )
    )
    assert seen["engine_options"] is None

    upstream.start()
    tiny_tokenizer.save_pretrained(tmp_path)
    built = build_engine(tmp_path, "remote", remote_url=upstream.url, options=options)
    engine = built.engine
    assert (engine.max_tries, engine.backoff) == (7, 0.2)
    timeout = engine._client.timeout
    assert (timeout.connect, timeout.read) == (3.0, 60.0)
    engine.close()
