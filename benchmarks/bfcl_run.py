"""BFCL questions sent to a real ``chatforge serve`` process through the official ``openai``
client, each reply scored by BFCL's checker (``bfcl_support``) and timed.

Decode speed. A reply that calls tools reaches a streaming client only whole, at its end
(the server holds tool-call text back until it can parse the calls), so the time between
streamed chunks says nothing about decoding here. Instead each question is also sent with
``max_tokens=1`` (the probe), once before the full request and once after: the same
prompt, tools and grammar set-up, and the first token, through the same HTTP path. The
reply's decode speed is

    (completion tokens - 1) / (seconds of the full request - seconds of the faster probe)

which is the definition ``chatforge bench`` uses, (n - 1) / the time after the first token.
Both requests carry a ``seed``, so that neither reuses the other's cached prompt: a seeded
request outside a conversation computes its whole prompt on the llama.cpp-based engines,
and greedy decoding ignores the seed. Replies shorter than ``MIN_SPEED_TOKENS`` tokens are
left out of the speed figure (the difference of two request times is then mostly noise).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bfcl_support as bfcl
import httpx

MIN_SPEED_TOKENS = 8
SEED = 1234
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    """A running ``chatforge serve`` and the client that talks to it."""

    label: str  # "constrain on", "constrain off", or "server default" where serve has no --constrain
    url: str
    client: Any  # openai.OpenAI
    process: subprocess.Popen
    log: Path


@dataclass
class SampleResult:
    category: str
    id: str
    passed: bool
    calls: list[dict[str, Any]]  # the reply's tool calls as [{name: arguments_json}]
    content: str | None  # the reply's text
    error: str | None  # BFCL's checker error
    error_type: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    seconds: float  # the full request, wall time at the client
    probe_seconds: float | None  # the faster of the two max_tokens=1 requests
    decode_tps: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def serve_command() -> list[str]:
    return [sys.executable, "-m", "chatforge.cli", "serve"]


def has_constrain_flag() -> bool:
    """Whether this ``chatforge serve`` takes ``--constrain`` (constrained decoding)."""
    done = subprocess.run([*serve_command(), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"`chatforge serve --help` failed:\n{done.stderr[-2000:]}")
    return "--constrain" in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chatforge serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"chatforge serve did not answer /health within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


@contextmanager
def serve(
    model: str, engine: str, constrain: str | None, extra_args: list[str] | None = None, timeout: float = 600
) -> Iterator[Served]:
    """``chatforge serve`` on a free loopback port for the block's duration.

    ``constrain``: ``on``/``off`` passed as ``--constrain``, or None to pass nothing (a serve
    without the flag). The server gets an API key of its own and a conversation database
    in a temporary directory, so nothing of the user's is read or written."""
    import openai

    with tempfile.TemporaryDirectory(prefix="chatforge-bfcl-") as tmp:
        port, key = free_port(), secrets.token_hex(16)
        log = Path(tmp) / "serve.log"
        cmd = [*serve_command(), "--model", model, "--engine", engine, "--no-ui"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--conversations-db", str(Path(tmp) / "conversations.sqlite3")]
        if constrain is not None:
            cmd += ["--constrain", constrain]
        cmd += extra_args or []
        env = {**os.environ, "CHATFORGE_API_KEY": key, "HF_HUB_OFFLINE": "1"}
        env["TOKENIZERS_PARALLELISM"] = "false"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(proc, url, log, timeout)
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
            label = f"constrain {constrain}" if constrain else "server default"
            yield Served(label, url, client, proc, log)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _request(
    served: Served, sample: bfcl.Sample, tools: list[dict[str, Any]], max_tokens: int
) -> tuple[Any, float]:
    started = time.perf_counter()
    response = served.client.chat.completions.create(
        model="default",
        messages=sample.messages,
        tools=tools,
        tool_choice="auto",
        temperature=0,
        max_tokens=max_tokens,
        seed=SEED,
    )
    return response, time.perf_counter() - started


def ask(served: Served, sample: bfcl.Sample, max_tokens: int = 512, speed: bool = True) -> SampleResult:
    """One question through the server, scored by BFCL's checker, timed (see the module doc)."""
    tools = bfcl.to_openai_tools(sample.functions)
    probes = [_request(served, sample, tools, 1)[1]] if speed else []
    response, seconds = _request(served, sample, tools, max_tokens)
    if speed:
        probes.append(_request(served, sample, tools, 1)[1])
    probe_seconds = min(probes) if probes else None
    choice = response.choices[0]
    wire_calls = [call.model_dump() for call in choice.message.tool_calls or []]
    output = bfcl.to_model_output(wire_calls, choice.message.content)
    result = bfcl.score(sample, output)
    n = response.usage.completion_tokens if response.usage else 0
    decode_tps = None
    if probe_seconds is not None and n >= MIN_SPEED_TOKENS and seconds > probe_seconds:
        decode_tps = (n - 1) / (seconds - probe_seconds)
    return SampleResult(
        category=sample.category,
        id=sample.id,
        passed=result.passed,
        calls=output if isinstance(output, list) else [],
        content=choice.message.content,
        error=result.error,
        error_type=result.error_type,
        prompt_tokens=response.usage.prompt_tokens if response.usage else 0,
        completion_tokens=n,
        finish_reason=choice.finish_reason,
        seconds=seconds,
        probe_seconds=probe_seconds,
        decode_tps=decode_tps,
    )


def warm_up(served: Served, sample: bfcl.Sample) -> None:
    """Unscored requests: a server's first request pays for start-up work (lazy
    initialisation, first allocations, about 10 s here) that would otherwise count against
    the first probe."""
    tools = bfcl.to_openai_tools(sample.functions)
    for max_tokens in (8, 1):
        _request(served, sample, tools, max_tokens)


def run_samples(
    servers: list[Served], samples: list[bfcl.Sample], max_tokens: int, speed: bool, progress: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Every sample through every server, the servers taking turns sample by sample (their
    order reversed on every other sample), so that load from elsewhere hits them alike."""
    results: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
    for served in servers:
        warm_up(served, samples[0])
    for i, sample in enumerate(samples):
        for served in servers[::-1] if i % 2 else servers:
            record = ask(served, sample, max_tokens, speed)
            results[served.label].append(asdict(record))
            if progress:
                mark = "pass" if record.passed else f"FAIL {record.error_type}"
                tps = f"{record.decode_tps:.1f} tok/s" if record.decode_tps else "-"
                print(
                    f"[{served.label}] {sample.id}: {mark}, {record.completion_tokens} tokens, "
                    f"{record.seconds:.1f} s, {tps}",
                    file=sys.stderr,
                    flush=True,
                )
    return results
