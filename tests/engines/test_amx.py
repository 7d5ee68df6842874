"""llama.cpp's AMX path (chatforge.engines.amx): the child-process probe, the threads that keep
PyTorch and llama.cpp apart, and, on the real default model, decoding with it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from .conftest import need_llama_cpp


def test_dedicated_thread_runs_calls_on_one_thread_and_nested_calls_directly():
    from chatforge.engines.amx import DedicatedThread

    worker = DedicatedThread("chatforge-test-thread")
    names = {worker.run(lambda: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and names.pop().startswith("chatforge-test-thread")
    # A call made from the thread itself runs at once (it would wait on itself otherwise).
    assert worker.run(lambda: worker.run(lambda: 42)) == 42
    with pytest.raises(ZeroDivisionError):
        worker.run(lambda: 1 / 0)


def test_on_llama_thread_keeps_llama_calls_off_the_callers_thread():
    from chatforge.engines.amx import on_llama_thread

    @on_llama_thread
    def where(x):
        return threading.current_thread().name, x

    name, value = where(3)
    assert name.startswith("chatforge-llama") and value == 3
    assert name != threading.current_thread().name


def test_a_crashing_probe_turns_the_path_off_and_is_remembered(monkeypatch, tmp_path):
    """The probe's child dies of SIGILL, as llama.cpp builds with a dropped tile configuration
    do: the verdict is 'does not work', kept, and the child is not run again."""
    need_llama_cpp()
    from chatforge.engines import amx

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF stand-in: the crashing child never reads it")
    monkeypatch.setattr(amx, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert amx.path_works(model) is False
    record = json.loads((tmp_path / "home" / "amx-probe.json").read_text())
    assert list(record.values()) == [False]
    monkeypatch.setattr(amx, "_PROBE", "print('AMX OK')")  # would pass, but is not asked again
    assert amx.path_works(model) is False
    # Another file (or another llama.cpp build) is probed afresh.
    other = tmp_path / "other.gguf"
    other.write_bytes(b"another model")
    assert amx.path_works(other) is True


def test_the_probe_record_keeps_the_last_few_builds(monkeypatch, tmp_path):
    """Each llama.cpp rebuild adds verdicts; those of builds no longer probed are dropped."""
    need_llama_cpp()
    from chatforge.engines import amx

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(amx, "_PROBE", "print('AMX OK')")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"a model")
    libraries = []
    for i in range(amx.KEEP_BUILDS + 2):
        library = tmp_path / f"libggml-cpu-{i}.so"
        library.write_bytes(b"build %d" % i)
        libraries.append(library)

    def probe_with(library):
        monkeypatch.setattr(amx, "_library", lambda: library)
        return amx.path_works(model)

    def builds():
        record = json.loads((tmp_path / "home" / "amx-probe.json").read_text())
        return [key.split(":")[0] for key in record]

    from chatforge.models.embedded import file_key

    keys = [file_key(library) for library in libraries]
    for library in libraries[: amx.KEEP_BUILDS]:
        assert probe_with(library)
    assert builds() == keys[: amx.KEEP_BUILDS]
    # Build 0 used again (its verdict is known) and then a new model with it: build 0
    # becomes the most recent, and the next new build pushes out build 1.
    assert probe_with(libraries[0])
    other = tmp_path / "other.gguf"
    other.write_bytes(b"another model")
    monkeypatch.setattr(amx, "_library", lambda: libraries[0])
    assert amx.path_works(other)
    assert builds() == keys[1 : amx.KEEP_BUILDS] + [keys[0], keys[0]]
    assert probe_with(libraries[amx.KEEP_BUILDS])
    assert builds() == keys[2 : amx.KEEP_BUILDS] + [keys[0], keys[0], keys[amx.KEEP_BUILDS]]


def test_the_path_is_on_where_cpu_and_build_have_it_unless_turned_off(monkeypatch, tmp_path):
    from chatforge.engines import amx, llamacpp

    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(llamacpp, "built_with_amx", lambda: True)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not read")
    for on in (None, "", "1", "yes"):
        if on is None:
            monkeypatch.delenv("CHATFORGE_LLAMA_AMX", raising=False)
        else:
            monkeypatch.setenv("CHATFORGE_LLAMA_AMX", on)
        assert amx.enabled() is True, on
    for off in ("0", "off", "False", " no "):
        monkeypatch.setenv("CHATFORGE_LLAMA_AMX", off)
        assert amx.enabled() is False, off
        assert amx.preferred_gguf(model) == model  # nothing widened, nothing probed
        assert llamacpp.extra_buffers_default(model) is False  # no AMX path
    monkeypatch.delenv("CHATFORGE_LLAMA_AMX")
    monkeypatch.setattr(llamacpp, "built_with_amx", lambda: False)
    assert amx.enabled() is False  # the build has no AMX path
    monkeypatch.setattr(llamacpp, "built_with_amx", lambda: True)
    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: False)
    assert amx.enabled() is False  # nor the CPU


# -- the real default model -------------------------------------------------------------
def default_paths():
    pytest.importorskip("llama_cpp")
    from chatforge.engines.select import resolve_gguf
    from chatforge.models.embedded import DEFAULT, EmbeddedModelError, assemble_gguf

    try:
        shipped = assemble_gguf(DEFAULT)
    except EmbeddedModelError as err:
        pytest.skip(str(err))
    return shipped, resolve_gguf("default")


@pytest.mark.integration
def test_default_model_uses_the_widened_file_exactly_where_the_amx_path_works():
    from chatforge.engines import amx

    shipped, chosen = default_paths()
    if amx.enabled():
        assert chosen != shipped and "q5_0-as-q8_0" in chosen.name
        assert amx.path_works(chosen)
    else:
        assert chosen == shipped


LOGITS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import llama_cpp as lib
    from chatforge.engines.llamacpp import extra_buffers_default
    lib.llama_backend_init()
    out = []
    ids = [9707, 11, 1246, 525, 498, 30, 220, 56568, 52801, 3837, 104014, 100, 8, 9, 10, 11]
    for path in sys.argv[1:]:
        params = lib.llama_model_default_params()
        params.use_extra_bufts = extra_buffers_default(path)
        model = lib.llama_model_load_from_file(path.encode(), params)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 64
        cparams.n_threads = cparams.n_threads_batch = 2
        ctx = lib.llama_init_from_model(model, cparams)
        batch = lib.llama_batch_init(64, 0, 1)
        for j, token in enumerate(ids):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, j, 1
            batch.seq_id[j][0], batch.logits[j] = 0, 1
        batch.n_tokens = len(ids)
        assert lib.llama_decode(ctx, batch) == 0
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        rows = np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(len(ids), n_vocab))
        out.append(rows.astype(np.float32))
    np.save(sys.stdout.buffer, np.stack(out))
    """
)


@pytest.mark.integration
def test_widened_default_model_computes_what_the_shipped_one_does():
    """Same weights, so the same next-token choices and logits within float noise (the AMX
    kernels sum in another order), in a child so that a crash fails the test, not the run."""
    import io

    shipped, chosen = default_paths()
    if chosen == shipped:
        from chatforge.models.gguf_widen import widened

        chosen = widened(shipped, progress=False)
    proc = subprocess.run(
        [sys.executable, "-c", LOGITS, str(shipped), str(chosen)], capture_output=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    both = np.load(io.BytesIO(proc.stdout))
    base, wide = both[0], both[1]
    assert (base.argmax(axis=1) == wide.argmax(axis=1)).mean() >= 15 / 16
    assert np.corrcoef(base.ravel(), wide.ravel())[0, 1] > 0.999


HYBRID_TURNS = textwrap.dedent(
    """
    import threading
    from chatforge.engines.base import SamplingParams
    from chatforge.engines.select import build_engine

    built = build_engine("default", "hybrid")
    engine, tokenizer = built.engine, built.tokenizer
    engine.min_prefill = 16  # these short prompts through PyTorch, whatever the default
    made = []

    def ask(text):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text * 3}], add_generation_prompt=True,
                                            return_dict=False)
        chunks = list(engine.stream(ids, SamplingParams(do_sample=False, max_new_tokens=6)))
        made.append(chunks[-1].stats.completion_tokens)

    for turn in range(3):  # two requests at a time: decode steps of two rows use the tile kernels
        pair = [threading.Thread(target=ask, args=(f"[{turn}.{i}] Write a haiku about the sea. ",)) for i in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
    print("PREFILLED", engine.prefilled_tokens, "MADE", sum(made), "FILE", engine.model_path.name)
    engine.close()
    """
)


@pytest.mark.integration
def test_hybrid_decodes_after_pytorch_prefills_without_crashing():
    """PyTorch's bf16 prefill releases the AMX tiles llama.cpp configured once per thread: the
    two ran on the batch thread in turn, and the first two-row decode step after a prefill died
    of SIGILL. Each turn here is a PyTorch prefill, then llama.cpp decode steps of two rows."""
    default_paths()
    from chatforge.engines.select import hybrid_fits

    if not hybrid_fits("default"):
        pytest.skip("no bf16 matrix units: the hybrid engine is not used here")
    proc = subprocess.run([sys.executable, "-c", HYBRID_TURNS], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "MADE 36" in proc.stdout
    prefilled = int(proc.stdout.split("PREFILLED")[1].split()[0])
    assert prefilled > 0, proc.stdout


@pytest.mark.integration
def test_model_fetch_prepares_the_file_llama_cpp_will_load(capsys):
    from chatforge.cli import main

    shipped, chosen = default_paths()
    assert main(["model", "fetch"]) == 0
    out = capsys.readouterr().out
    assert f"(GGUF: {shipped})" in out
    assert (f"it loads {chosen}" in out) == (chosen != shipped)


@pytest.mark.integration
def test_make_install_builds_llama_cpp_with_chatforges_patch_where_it_has_the_amx_path():
    """The Makefile builds llama-cpp-python from its source release with patches/ applied on
    AMX CPUs; an AMX build without them is the plain one, whose few-row steps are slower."""
    pytest.importorskip("llama_cpp")
    from chatforge.engines import amx
    from chatforge.engines.llamacpp import built_with_amx, cpu_has_amx

    if not (cpu_has_amx() and built_with_amx()):
        pytest.skip("no AMX path here: the patch changes nothing that is compiled")
    assert amx.small_batch_kernels(), f"{amx._library()} lacks {amx.PATCH_MARK!r}: run `make llama-cpp`"


FEW_ROWS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import llama_cpp as lib
    from chatforge.engines.llamacpp import extra_buffers_default
    path = sys.argv[1]
    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.use_extra_bufts = extra_buffers_default(path)
    model = lib.llama_model_load_from_file(path.encode(), params)
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = 256, 64, 64, 4
    cparams.kv_unified = False
    cparams.n_threads = cparams.n_threads_batch = 2
    ctx = lib.llama_init_from_model(model, cparams)
    memory = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(64, 0, 1)
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))

    def decode(items):  # (token, position, sequence); the logits of every item
        for j, (token, pos, seq) in enumerate(items):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
            batch.seq_id[j][0], batch.logits[j] = seq, 1
        batch.n_tokens = len(items)
        assert lib.llama_decode(ctx, batch) == 0
        return np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(len(items), n_vocab)).copy()

    prompt = [9707, 11, 1246, 525, 498, 30, 220, 56568, 52801, 3837, 104014]
    for seq in range(4):  # a prompt of its own each
        decode([(token, j, seq) for j, token in enumerate(prompt + [100 + seq])])
    n = len(prompt) + 1
    out = []
    for rows in (2, 3, 4):
        step = [(200 + 7 * seq, n, seq) for seq in range(rows)]
        together = decode(step)
        for seq in range(rows):
            lib.llama_memory_seq_rm(memory, seq, n, -1)
        alone = np.stack([decode([item])[0] for item in step])
        for seq in range(rows):
            lib.llama_memory_seq_rm(memory, seq, n, -1)
        out.append(np.stack([together, alone]))
    np.save(sys.stdout.buffer, np.concatenate(out, axis=1).astype(np.float32))
    """
)


@pytest.mark.integration
def test_a_step_of_a_few_sequences_computes_what_each_alone_does():
    """Decode steps of 2, 3 and 4 sequences (the patched build's few-row VNNI kernel for the
    Q8_0 matrices, the tile kernels for the others) against each sequence's step alone (the
    one-row kernels), on the default model as the engine loads it, in a child process."""
    import io

    from chatforge.engines import amx

    _, chosen = default_paths()
    proc = subprocess.run([sys.executable, "-c", FEW_ROWS, str(chosen)], capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    together, alone = np.load(io.BytesIO(proc.stdout))
    assert together.shape[0] == 2 + 3 + 4
    assert (together.argmax(axis=1) == alone.argmax(axis=1)).all()
    scale = np.abs(alone).max(axis=1, keepdims=True)
    # With chatforge's few-row kernels (AMX CPUs), a row of a batch is computed with the
    # one-row kernel's arithmetic: equal up to float noise. Elsewhere (AVX-512 or AVX2 CPUs,
    # or the AMX path off) llama.cpp's batched kernels quantise the activations and sum in
    # another order than its one-row kernels, so a row differs by up to a few percent of the
    # largest logit while the choice of token stays the same.
    bound = 2e-3 if amx.enabled() and amx.small_batch_kernels() else 5e-2
    assert (np.abs(together - alone) / scale).max() < bound, (np.abs(together - alone) / scale).max(axis=1)
    # Each row is its own sequence's: distinct prompts give distinct logits.
    assert np.abs(alone[0] - alone[1]).max() > 0.1 * scale[0, 0]
