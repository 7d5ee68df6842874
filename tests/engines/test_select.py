"""Engine selection (``--engine``), ``load_model(engine=...)`` and the quantization options."""

from __future__ import annotations

import pytest

from chatforge.engines import select
from chatforge.engines.select import choose_engine, normalise_engine, quantization_config


def test_explicit_engines_and_aliases():
    assert normalise_engine("llama_cpp") == normalise_engine("llamacpp") == "llama.cpp"
    assert normalise_engine("hf") == "transformers"
    with pytest.raises(ValueError, match="unknown engine 'vllm'"):
        normalise_engine("vllm")


@pytest.fixture
def model_files(tmp_path):
    """A (stand-in) GGUF file and a Hugging Face directory: the choice reads only their form."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    return gguf, hf_dir


def test_auto_choice(model_files, monkeypatch):
    from chatforge.models import device

    gguf, hf_dir = model_files
    monkeypatch.setattr(select, "llama_cpp_available", lambda: True)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert choose_engine(gguf, device="cpu") == "llama.cpp"
    assert choose_engine("default", device="cpu") == "llama.cpp"
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    # With bf16 matrix units: hybrid where HF weights are at hand (the default; --prefill-model).
    assert choose_engine("default", device="cpu") == "hybrid"
    assert choose_engine(gguf, device="cpu") == "llama.cpp"
    assert choose_engine(gguf, device="cpu", prefill_model=hf_dir) == "hybrid"
    assert choose_engine(hf_dir, device="cpu") == "transformers"
    assert choose_engine("default", device="cpu", adapter="lora") == "transformers"
    assert choose_engine("default", device="cuda") == "transformers"
    assert choose_engine("default", remote_url="http://x/v1") == "remote"
    assert choose_engine("default", "transformers", device="cpu") == "transformers"
    monkeypatch.setattr(select, "llama_cpp_available", lambda: False)
    assert choose_engine(gguf, device="cpu") == "transformers"


def test_quantize_needs_cuda_and_says_so(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU; on CPU use a quantized GGUF"):
        quantization_config("int4", "auto")
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantization_config("int3", "cuda")
    assert quantization_config(None, "cpu") is None


def test_quantize_configs_on_cuda(monkeypatch):
    import torch

    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (CUDA-only extra)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert quantization_config("int8", "cuda").load_in_8bit
    four = quantization_config("int4", "cuda")
    assert (
        four.load_in_4bit
        and four.bnb_4bit_quant_type == "nf4"
        and four.bnb_4bit_compute_dtype == torch.bfloat16
    )


def test_quantize_without_bitsandbytes_names_the_package(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        quantization_config("int8", "cuda")


def test_llama_cpp_refuses_adapters_and_hf_dirs(tmp_path):
    pytest.importorskip("llama_cpp")
    with pytest.raises(ValueError, match="cannot attach PEFT adapters"):
        select.build_engine("default", "llama.cpp", adapter=tmp_path)
    with pytest.raises(ValueError, match="needs a .gguf file"):
        select.resolve_gguf(tmp_path)


def test_cli_engine_flags_reach_load_model(monkeypatch):
    from chatforge import chat
    from chatforge.cli import args as cli_args
    from chatforge.cli import commands as cli

    seen = {}
    monkeypatch.setattr(chat, "load_model", lambda ref, **kw: seen.update(kw, ref=ref))
    args = cli.build_parser().parse_args(
        [
            "chat",
            "--engine",
            "remote",
            "--remote-url",
            "http://h:8000/v1",
            "--remote-model",
            "qwen",
            "--remote-api-key",
            "k",
            "--parallel",
            "8",
            "--threads",
            "2",
        ]
    )
    cli_args.load_from_args(args)
    assert seen["engine"] == "remote" and seen["remote_url"] == "http://h:8000/v1"
    assert seen["remote_model"] == "qwen" and seen["remote_api_key"] == "k"
    assert seen["engine_options"] == {"n_parallel": 8, "n_threads": 2}


def test_load_model_with_llama_cpp(smollm_path):
    pytest.importorskip("llama_cpp")
    from chatforge.chat import load_model

    model = load_model(smollm_path, engine="llama.cpp", engine_options={"n_parallel": 1, "n_threads": 1})
    assert model.engine.name == "llama.cpp" and model.model is None
    response, history = model.chat("What is 2+2?", history=[], do_sample=False, max_new_tokens=20)
    assert "4" in response and history[-1]["role"] == "assistant"
    model.engine.close()


def test_load_model_with_a_remote_engine(llama_server, smollm_path):
    from chatforge.chat import load_model

    model = load_model(smollm_path, engine="auto", remote_url=llama_server)
    assert model.engine.name == "remote" and model.name == "smollm2"
    response, _ = model.chat("What is 2+2?", history=[], do_sample=False, max_new_tokens=20)
    assert "4" in response


def test_gguf_quantize_picks_a_llama_cpp_engine_or_says_why(model_files, monkeypatch):
    from chatforge.models import device

    gguf, hf_dir = model_files
    monkeypatch.setattr(select, "llama_cpp_available", lambda: True)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    # A GGUF weight type is for llama.cpp even where transformers would be chosen (a GPU).
    assert choose_engine("default", device="cuda", quantize="iq4_nl") == "hybrid"
    assert choose_engine(gguf, device="cpu", quantize="q4_0") == "llama.cpp"
    assert choose_engine(gguf, "hybrid", quantize="q4_0", prefill_model=hf_dir) == "hybrid"
    with pytest.raises(ValueError, match="use --engine llama.cpp or hybrid"):
        choose_engine(gguf, "transformers", quantize="iq4_nl")
    with pytest.raises(ValueError, match="re-quantizes a GGUF file, and '.*hf' is not one"):
        choose_engine(hf_dir, quantize="iq4_nl")
    monkeypatch.setattr(select, "llama_cpp_available", lambda: False)
    with pytest.raises(ValueError, match="needs llama-cpp-python"):
        choose_engine(gguf, quantize="q8_0")
    # bitsandbytes types still mean transformers, and its error names the GGUF ones.
    monkeypatch.setattr(select, "llama_cpp_available", lambda: True)
    assert choose_engine(gguf, device="cpu", quantize="int8") == "transformers"
    with pytest.raises(ValueError, match="or q4_0, iq4_nl, q8_0 with --engine llama.cpp or hybrid"):
        quantization_config("iq4_nl", "cuda")
