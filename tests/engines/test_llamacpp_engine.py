"""The llama.cpp engine on a real GGUF (SmolLM2-135M): greedy output, KV reuse across turns,
concurrent requests decoded together, stops, cancel, and vocabulary agreement with the
Hugging Face tokenizer. The AMX-crash guard for the real default model is at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import types

import pytest
from smollm import chat_ids, need_llama_cpp, run

from chatforge.engines.base import PromptTooLongError, SamplingParams

GREEDY = dict(do_sample=False, max_new_tokens=12)


REFERENCE = textwrap.dedent(
    """
    import json, sys
    import llama_cpp

    path, ids, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = llama_cpp.Llama(path, n_ctx=1024, verbose=False)
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        out.append(token)
        if len(out) == n:
            break
    print(json.dumps(out))
    """
)


def test_greedy_matches_plain_llama_cpp(smollm_engine, smollm_tokenizer, smollm_path):
    """Token for token what llama-cpp-python's own ``Llama.generate`` gives (run in a child
    process: a crashing build must fail this test, not kill the test run)."""
    ids = chat_ids(smollm_tokenizer, "What is 2+2?")
    out, last = run(smollm_engine, ids, SamplingParams(do_sample=False, max_new_tokens=16))
    assert "4" in smollm_tokenizer.decode(out)
    assert last.stats.prompt_tokens == len(ids) and last.stats.completion_tokens == len(out)
    proc = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(smollm_path), json.dumps(ids), "16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == out


def test_kv_state_reuses_the_common_prefix(smollm_engine, smollm_tokenizer):
    state = smollm_engine.new_state()
    first = chat_ids(smollm_tokenizer, "Name a colour.")
    out1, last1 = run(smollm_engine, first, SamplingParams(**GREEDY), state)
    # A new conversation computes its prompt (but for a prefix other sequences share, such as
    # the template's default system prompt: tests/engines/test_prefix_sharing.py).
    assert last1.stats.reused_tokens < len(first) - 5
    assert last1.stats.computed_tokens == len(first) - last1.stats.reused_tokens
    follow = first + out1 + smollm_tokenizer.encode("\nAnd another one?", add_special_tokens=False)
    out2, last2 = run(smollm_engine, follow, SamplingParams(**GREEDY), state)
    # As with transformers: the prompt and every generated token but the last are reused.
    assert last2.stats.reused_tokens == len(first) + len(out1) - 1
    assert last2.stats.computed_tokens == len(follow) - last2.stats.reused_tokens
    assert out2 == run(smollm_engine, follow, SamplingParams(**GREEDY))[0]
    # A diverging prompt keeps only the common prefix.
    other = chat_ids(smollm_tokenizer, "Name an animal.")
    _, last3 = run(smollm_engine, other, SamplingParams(**GREEDY), state)
    common = next(i for i, (a, b) in enumerate(zip(follow, other)) if a != b)
    assert last3.stats.reused_tokens == common


def test_concurrent_requests_match_one_at_a_time(smollm_engine, smollm_tokenizer):
    prompts = [chat_ids(smollm_tokenizer, q) for q in ("Count to five.", "Say hello.", "What is 2+2?", "Hi!")]
    params = SamplingParams(do_sample=False, max_new_tokens=6)
    alone = [run(smollm_engine, p, params)[0] for p in prompts]
    results: list = [None] * len(prompts)

    def worker(i):
        results[i] = run(smollm_engine, prompts[i], params)[0]

    # Four requests on three sequences: one waits for a free sequence, then joins.
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == alone


def test_an_evicted_conversation_is_recomputed_correctly(smollm_engine, smollm_tokenizer):
    params = SamplingParams(do_sample=False, max_new_tokens=6)
    state = smollm_engine.new_state()
    ids = chat_ids(smollm_tokenizer, "Tell me a fact.")
    out, _ = run(smollm_engine, ids, params, state)
    others = [smollm_engine.new_state() for _ in range(3)]  # three sequences: the oldest goes
    for i, s in enumerate(others):
        run(smollm_engine, chat_ids(smollm_tokenizer, f"Number {i}"), params, s)
    follow = ids + out + smollm_tokenizer.encode("\nMore?", add_special_tokens=False)
    again, last = run(smollm_engine, follow, params, state)
    assert last.stats.reused_tokens < len(ids)  # its own cache went; a shared system prompt at most
    assert again == run(smollm_engine, follow, params)[0]


def test_stop_token_stop_string_and_length(smollm_engine, smollm_tokenizer):
    ids = chat_ids(
        smollm_tokenizer, "What is 2+2?"
    )  # "The answer to this classic math problem is 4.<|im_end|>"
    eos = smollm_tokenizer.convert_tokens_to_ids("<|im_end|>")
    out, last = run(
        smollm_engine, ids, SamplingParams(do_sample=False, max_new_tokens=24, stop_token_ids=[eos])
    )
    assert last.finish_reason == "stop" and eos not in out
    word = smollm_tokenizer.decode(out).split()[2]
    chunks = list(smollm_engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=24, stop=[word])))
    assert chunks[-1].finish_reason == "stop" and word not in "".join(c.text for c in chunks)
    _, last = run(smollm_engine, ids, SamplingParams(do_sample=False, max_new_tokens=3))
    assert last.finish_reason == "length" and last.stats.completion_tokens == 3


def test_seeded_sampling_is_reproducible(smollm_engine, smollm_tokenizer):
    ids = chat_ids(smollm_tokenizer, "Write a word.")
    params = dict(do_sample=True, temperature=1.2, top_p=0.9, max_new_tokens=8, seed=11)
    a, _ = run(smollm_engine, ids, SamplingParams(**params))
    b, _ = run(smollm_engine, ids, SamplingParams(**params))
    assert a == b and len(a) == 8
    penalised, _ = run(
        smollm_engine, ids, SamplingParams(**params, repetition_penalty=1.3, presence_penalty=0.5)
    )
    assert len(penalised) == 8


def test_cancel_stops_at_once(smollm_engine, smollm_tokenizer):
    cancel = threading.Event()
    count = 0
    for chunk in smollm_engine.stream(
        chat_ids(smollm_tokenizer, "Tell a long story."),
        SamplingParams(do_sample=False, max_new_tokens=200),
        cancel=cancel,
    ):
        count += 1
        if count == 3:
            cancel.set()
        if chunk.stats:
            assert chunk.finish_reason == "cancelled" and chunk.stats.completion_tokens <= 5


def test_prompt_longer_than_the_sequence_context(smollm_engine):
    with pytest.raises(PromptTooLongError, match="context window is 1024"):
        list(smollm_engine.stream(list(range(100, 1200)), SamplingParams(**GREEDY)))


def test_gguf_vocab_ids_equal_the_hf_tokenizer(smollm_engine, smollm_tokenizer):
    check_vocab(smollm_engine, smollm_tokenizer)


def check_vocab(engine, tokenizer):
    texts = [
        "Hello, world! How are you today?",
        "def add(a, b):\n    return a + b\n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "数字 123 and émojis 🎉",
    ]
    for text in texts:
        assert engine.tokenize(text) == tokenizer.encode(text, add_special_tokens=False), text
    n = min(len(tokenizer), engine.n_vocab)
    checked = 0
    for token in range(0, n, max(1, n // 2000)):
        name = tokenizer.convert_ids_to_tokens(token)
        if name.startswith("[PAD"):  # unused padding ids at the end of the embedding matrix
            continue
        text = tokenizer.convert_tokens_to_string([name]).encode()
        if b"\xef\xbf\xbd" in text:  # a partial UTF-8 byte: no text of its own
            continue
        assert engine.piece(token) == text, token
        checked += 1
    assert checked > 1000


def test_extra_buffer_types_wait_for_the_amx_probe_where_the_amx_path_could_run(monkeypatch, tmp_path):
    from chatforge import llama_lib
    from chatforge.engines import amx

    verdicts = []
    monkeypatch.setattr(amx, "path_works", lambda path: verdicts.append(path) or path.name == "works.gguf")
    monkeypatch.setattr(amx, "enabled", lambda: True)
    for cpu, build, path, expected in (
        (False, True, None, True),  # no AMX here: repacked AVX-512 weights
        (True, False, None, True),  # a build without the AMX path
        (True, True, None, False),  # AMX path, no model to probe it with
        (True, True, tmp_path / "works.gguf", True),
        (True, True, tmp_path / "crashes.gguf", False),
    ):
        monkeypatch.setattr(llama_lib, "cpu_has_amx", lambda cpu=cpu: cpu)
        monkeypatch.setattr(llama_lib, "built_with_amx", lambda build=build: build)
        assert amx.extra_buffers_default(path) is expected, (cpu, build, path)
    assert verdicts == [tmp_path / "works.gguf", tmp_path / "crashes.gguf"]
    monkeypatch.setattr(amx, "enabled", lambda: False)  # CHATFORGE_LLAMA_AMX=0
    assert amx.extra_buffers_default(tmp_path / "works.gguf") is False


def test_the_amx_path_is_read_from_the_build(monkeypatch):
    from chatforge import llama_lib

    need_llama_cpp()
    info = llama_lib.system_info()
    assert info is not None and b"AVX" in info
    llama_lib.built_with_amx.cache_clear()
    try:
        monkeypatch.setattr(llama_lib, "system_info", lambda: b"CPU : AVX512 = 1 | AMX_INT8 = 1 | ")
        assert llama_lib.built_with_amx() is True
        llama_lib.built_with_amx.cache_clear()
        monkeypatch.setattr(llama_lib, "system_info", lambda: b"CPU : AVX512 = 1 | REPACK = 1 | ")
        assert llama_lib.built_with_amx() is False
        llama_lib.built_with_amx.cache_clear()
        monkeypatch.setattr(llama_lib, "system_info", lambda: None)  # unreadable: assume the worst
        assert llama_lib.built_with_amx() is True
    finally:
        llama_lib.built_with_amx.cache_clear()


def test_a_step_over_sequences_out_of_order_gives_each_request_its_own_logits(
    smollm_engine, smollm_tokenizer
):
    """The step is sent to llama.cpp in ascending sequence order (faster there); every
    request must still get the logits of its own sequence."""
    import numpy as np

    from chatforge.engines.batching import Work

    engine = smollm_engine
    prompts = [chat_ids(smollm_tokenizer, q) for q in ("Name a colour.", "What is the capital of France?")]
    low, high = engine._sequences[0], engine._sequences[2]

    def step(pairs):
        for sequence, _ in pairs:
            engine._clear(sequence)
        rows = engine._forward(
            [Work(types.SimpleNamespace(slot=sequence, finished=False), list(ids), logits=True) for sequence, ids in pairs]
        )
        return [row.copy() for row in rows]  # views into llama.cpp's buffer until the next pass

    alone = [step([(high, prompts[0])])[0], step([(low, prompts[1])])[0]]
    together = step([(high, prompts[0]), (low, prompts[1])])  # given high first
    for own, other, row in ((alone[0], alone[1], together[0]), (alone[1], alone[0], together[1])):
        assert int(row.argmax()) == int(own.argmax())
        assert np.abs(row - own).max() < 0.25 * np.abs(row - other).max()
    assert high.ids == prompts[0] and low.ids == prompts[1]
    for sequence in (low, high):
        engine._clear(sequence)


def test_openmp_builds_are_recognised(monkeypatch):
    from chatforge import llama_lib

    lib = types.SimpleNamespace(llama_print_system_info=lambda: b"CPU : AVX2 = 1 | OPENMP = 1 | REPACK = 1 |")
    monkeypatch.setattr(llama_lib, "import_llama_cpp", lambda: lib)
    llama_lib.built_with_openmp.cache_clear()
    try:
        assert llama_lib.built_with_openmp() is True
        lib.llama_print_system_info = lambda: b"CPU : AVX2 = 1 | REPACK = 1 |"
        llama_lib.built_with_openmp.cache_clear()
        assert llama_lib.built_with_openmp() is False
    finally:
        llama_lib.built_with_openmp.cache_clear()


def test_installed_llama_cpp_has_its_own_thread_pool():
    """`make install` builds llama.cpp without OpenMP: with PyTorch's libgomp shared in one
    process, an OpenMP build decodes about 25% slower (docs/benchmarks.md)."""
    pytest.importorskip("llama_cpp")
    from chatforge import llama_lib

    llama_lib.built_with_openmp.cache_clear()
    assert not llama_lib.built_with_openmp(), llama_lib.OPENMP_HINT


# -- the real default model -------------------------------------------------------------
CRASH_PROBE = textwrap.dedent(
    """
    from chatforge.engines.llamacpp import LlamaCppEngine
    from chatforge.engines.select import load_tokenizer, resolve_gguf
    from chatforge.engines.base import SamplingParams

    tokenizer, _ = load_tokenizer("default")
    engine = LlamaCppEngine(resolve_gguf("default"), tokenizer, context_length=2048, n_parallel=2)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_dict=False)
    chunks = list(engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=8)))
    print("TOKENS", chunks[-1].stats.completion_tokens)
    engine.close()
    """
)


@pytest.mark.integration
def test_default_gguf_decodes_without_crashing():
    """llama.cpp's AMX path segfaults on the first decode on AMX CPUs in builds that drop its tile configuration (docs/models.md); a crash kills
    the process, so the decode runs in a child and its exit status is checked."""
    pytest.importorskip("llama_cpp")
    from chatforge.models.embedded import EmbeddedModelError, part_paths

    try:
        part_paths()
    except EmbeddedModelError as err:
        pytest.skip(str(err))
    proc = subprocess.run([sys.executable, "-c", CRASH_PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"llama.cpp decode exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "TOKENS 8" in proc.stdout


@pytest.mark.integration
def test_default_gguf_vocab_equals_the_hf_tokenizer():
    pytest.importorskip("llama_cpp")
    from chatforge.engines.llamacpp import LlamaCppEngine
    from chatforge.engines.select import load_tokenizer, resolve_gguf
    from chatforge.models.embedded import EmbeddedModelError

    try:
        tokenizer, _ = load_tokenizer("default")
        path = resolve_gguf("default")
    except EmbeddedModelError as err:
        pytest.skip(str(err))
    engine = LlamaCppEngine(path, tokenizer, context_length=512, n_parallel=1)
    try:
        check_vocab(engine, tokenizer)
        assert engine.tokenize("你好，请介绍一下你自己") == tokenizer.encode("你好，请介绍一下你自己")
    finally:
        engine.close()


PLAIN_PROBE = textwrap.dedent(
    """
    import sys
    import llama_cpp

    llm = llama_cpp.Llama(sys.argv[1], n_ctx=512, verbose=False)  # extra buffer types on: the AMX path
    out = llm.create_completion("Hello", max_tokens=4, temperature=0)
    print("OK", out["usage"]["completion_tokens"])
    """
)


@pytest.mark.integration
def test_installed_llama_cpp_build_is_safe_for_plain_use():
    """The build itself (used by llama_cpp.server and plain ``Llama``) must not take the crashing
    AMX path: `make install` builds it without AMX on AMX CPUs."""
    pytest.importorskip("llama_cpp")
    from chatforge.engines.select import resolve_gguf
    from chatforge.models.embedded import EmbeddedModelError

    try:
        path = resolve_gguf("default")
    except EmbeddedModelError as err:
        pytest.skip(str(err))
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_PROBE, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (
        f"plain llama_cpp.Llama crashed (exit {proc.returncode}): rebuild llama-cpp-python with the "
        f"flags in the Makefile (LLAMA_CMAKE_ARGS) and --no-cache-dir\n{proc.stderr[-2000:]}"
    )


def test_the_load_log_says_whether_the_amx_path_is_on_and_why_not(monkeypatch):
    from chatforge import llama_lib
    from chatforge.engines import amx

    monkeypatch.setattr(llama_lib, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(llama_lib, "built_with_amx", lambda: True)
    monkeypatch.setenv("CHATFORGE_LLAMA_AMX", "0")
    assert amx.extra_buffers_note(False, asked=False) == ", extra buffer types off (CHATFORGE_LLAMA_AMX=0)"
    monkeypatch.delenv("CHATFORGE_LLAMA_AMX")
    assert "AMX path failed its check" in amx.extra_buffers_note(False, asked=False)
    assert amx.extra_buffers_note(False, asked=True) == ", extra buffer types off"
    monkeypatch.setattr(llama_lib, "small_batch_kernels", lambda: False)
    assert amx.extra_buffers_note(True, asked=False) == ", AMX path on"
    monkeypatch.setattr(llama_lib, "small_batch_kernels", lambda: True)  # chatforge's patched build
    assert amx.extra_buffers_note(True, asked=False) == ", AMX path on (with chatforge's small-batch kernels)"
    monkeypatch.setattr(llama_lib, "cpu_has_amx", lambda: False)
    assert amx.extra_buffers_note(True, asked=False) == ""  # repacked weights, nothing to say


def test_a_failed_load_says_why_in_one_error_and_prints_nothing(
    smollm_path, smollm_tokenizer, tmp_path, monkeypatch, capfd
):
    """With llama.cpp's log hidden (``chatforge chat``), its own reason for a failed load is
    the error's, on one line; a file that is no GGUF at all is said so before llama.cpp reads it."""
    need_llama_cpp()
    from chatforge import llama_lib
    from chatforge.engines.base import EngineError
    from chatforge.engines.llamacpp import LlamaCppEngine

    monkeypatch.setenv("CHATFORGE_LLAMA_AMX", "0")  # no AMX probe of the broken file
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(smollm_path.read_bytes()[:100_000])
    other = tmp_path / "other.gguf"
    other.write_text("not a model")
    shown = llama_lib.native_logs()
    llama_lib.set_native_logs("none")
    try:
        with pytest.raises(
            EngineError, match=r"could not load .*broken\.gguf .*: .*failed to load model"
        ) as err:
            LlamaCppEngine(broken, smollm_tokenizer, n_threads=1, n_parallel=1, context_length=128)
        with pytest.raises(EngineError, match="is not a GGUF model file"):
            LlamaCppEngine(other, smollm_tokenizer, n_threads=1)
    finally:
        llama_lib.set_native_logs(shown)
    assert "\n" not in str(err.value)
    assert capfd.readouterr().err == ""
