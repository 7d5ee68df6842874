"""ChatGLM2/3's SentencePiece tokenizer as a Hugging Face fast tokenizer, with ChatGLM's chat templates.

ChatGLM2 and ChatGLM3 ship a SentencePiece ``tokenizer.model`` and a remote-code tokenizer class that
appends its special tokens *after* the SentencePiece vocabulary, in a fixed order. For the published
64,789-piece model that gives ``[MASK]`` 64789, ``[gMASK]`` 64790, ``[sMASK]`` 64791, ``sop`` 64792,
``eop`` 64793 and (ChatGLM3 only) ``<|system|>`` 64794, ``<|user|>`` 64795, ``<|assistant|>`` 64796,
``<|observation|>`` 64797.

This module rebuilds that tokenizer with the ``tokenizers`` library, without running the remote code:

* every SentencePiece piece keeps its id (BPE and Unigram models, byte fallback, the model's own
  normalizer settings: dummy prefix, whitespace handling, precompiled character map);
* the ChatGLM special tokens are added right after the vocabulary, in ChatGLM's order;
* plain ``encode`` adds nothing (no ``[gMASK]sop``): chatforge's template layer, or the chat template
  stored here, writes the prefix.

The chat templates render the native formats as text that tokenizes to the same ids as ChatGLM's own
piecewise encoding (each role's metadata line and each content are encoded separately, each with the
SentencePiece dummy prefix). The trick is a space after the metadata newline: ``"\\n " + content``
normalizes to ``▁\\n▁content``, and since ``\\n`` has no piece of its own (it is a byte-fallback token) it
is a merge barrier, so the ids equal ``encode(metadata + "\\n") + encode(content)``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import BPE, Unigram
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPACE_SYMBOL = "▁"
# ChatGLM2's special tokens, then the four role tokens ChatGLM3 added; ids follow the SentencePiece vocabulary.
CHATGLM2_SPECIAL_TOKENS: tuple[str, ...] = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
CHATGLM3_ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
CHATGLM3_SPECIAL_TOKENS: tuple[str, ...] = CHATGLM2_SPECIAL_TOKENS + CHATGLM3_ROLE_TOKENS
# "sop"/"eop" are ordinary English letters: match them only as whole words so "isopropyl" stays text.
_WORD_LIKE_SPECIAL_TOKENS = frozenset({"sop", "eop"})
VARIANTS = ("chatglm2", "chatglm3")

# SentencePiece piece types (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2

# Native ChatGLM3, rendered as chatforge's own ChatGLM3 template renders it (templates/chatglm3.py):
# [gMASK]sop, then per message <|role|>metadata\n content, no separators. Tools (the `tools` argument,
# or a system message's `tools` key as in ChatGLM3's history format) are indented JSON in the system
# message. A tool call is an assistant turn whose metadata is the tool name and whose content is a
# fenced ```python tool_call(...)``` block with Python-literal arguments; role "interpreter" (or an
# assistant message with metadata "interpreter") is the code interpreter's call; tool results are
# <|observation|>. A final assistant turn without a generation prompt ends with </s> (for training).
CHATGLM3_CHAT_TEMPLATE = r"""
{%- macro turn(role, metadata, content) -%}
    {{- '<|' + role + '|>' + metadata + '\n' -}}
    {%- if content -%}{{- ' ' + content -}}{%- endif -%}
{%- endmacro -%}
{%- macro py(value) -%}
    {%- if value is string -%}
        {%- set body = value | replace('\\', '\\\\') | replace('\n', '\\n') | replace('\t', '\\t') | replace('\r', '\\r') -%}
        {%- if "'" in value and '"' not in value -%}{{- '"' + body + '"' -}}
        {%- else -%}{{- "'" + body | replace("'", "\\'") + "'" -}}
        {%- endif -%}
    {%- elif value is boolean -%}{{- 'True' if value else 'False' -}}
    {%- elif value is none -%}{{- 'None' -}}
    {%- elif value is mapping -%}
        {{- '{' -}}
        {%- for key, item in value.items() -%}
            {{- py(key) + ': ' + py(item) -}}{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}
        {%- endfor -%}
        {{- '}' -}}
    {%- elif value is sequence -%}
        {{- '[' -}}
        {%- for item in value -%}{{- py(item) -}}{%- if not loop.last -%}{{- ', ' -}}{%- endif -%}{%- endfor -%}
        {{- ']' -}}
    {%- else -%}{{- value | string -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro fenced(code) -%}
    {%- if code.strip().startswith('```') -%}{{- code -}}{%- else -%}{{- '```python\n' + code + '\n```' -}}{%- endif -%}
{%- endmacro -%}
{{- '[gMASK]sop' -}}
{%- set ns = namespace(tool_list=[], args=[], last_assistant=false) -%}
{%- if not tools and messages and messages[0].tools is defined and messages[0].tools -%}
    {%- set tools = messages[0].tools -%}
{%- endif -%}
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
    {%- for tool in tools -%}
        {%- set ns.tool_list = ns.tool_list + [tool.function if tool.function is defined else tool] -%}
    {%- endfor -%}
    {%- set system = messages[0].content if has_system and messages[0].content is string else '' -%}
    {{- turn('system', '', (system + '\n' if system else '') + ns.tool_list | tojson(indent=4)) -}}
{%- endif -%}
{%- for message in messages -%}
    {%- set content = message.content if message.content is string else '' -%}
    {%- set metadata = message.metadata if message.metadata is string else '' -%}
    {%- set ns.last_assistant = message.role in ['assistant', 'interpreter'] -%}
    {%- if message.role == 'system' -%}
        {%- if not (loop.first and tools) -%}{{- turn('system', '', content) -}}{%- endif -%}
    {%- elif message.role == 'user' -%}
        {{- turn('user', '', content) -}}
    {%- elif message.role == 'interpreter' or (message.role == 'assistant' and metadata == 'interpreter') -%}
        {{- turn('assistant', 'interpreter', fenced(content)) -}}
    {%- elif message.role == 'assistant' -%}
        {%- if content or not message.tool_calls -%}{{- turn('assistant', metadata, content) -}}{%- endif -%}
        {%- for call in message.tool_calls or [] -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {%- if fn.arguments is mapping -%}
                {%- set ns.args = [] -%}
                {%- for key, value in fn.arguments.items() -%}
                    {%- set ns.args = ns.args + [key + '=' + py(value)] -%}
                {%- endfor -%}
                {%- set args = ns.args | join(', ') -%}
            {%- else -%}
                {%- set args = '**' + (fn.arguments or '{}') -%}
            {%- endif -%}
            {{- turn('assistant', fn.name, '```python\ntool_call(' + args + ')\n```') -}}
        {%- endfor -%}
    {%- elif message.role == 'tool' or message.role == 'observation' -%}
        {{- turn('observation', '', content) -}}
    {%- else -%}
        {{- raise_exception('ChatGLM3 has no role ' + message.role) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}
{%- elif ns.last_assistant -%}{{- '</s>' -}}
{%- endif -%}
""".strip()

# ChatGLM2's prompt: "[Round N]\n\n问：{query}\n\n答：{response}\n\n" per round, rounds counted from 1.
CHATGLM2_CHAT_TEMPLATE = r"""
{{- '[gMASK]sop' -}}
{%- set ns = namespace(round=0) -%}
{%- for message in messages -%}
    {%- if message.role == 'user' -%}
        {%- set ns.round = ns.round + 1 -%}
        {{- '[Round ' + ns.round | string + ']\n\n问：' + message.content + '\n\n答：' -}}
    {%- elif message.role == 'assistant' -%}
        {{- message.content + '\n\n' -}}
    {%- else -%}
        {{- raise_exception('ChatGLM2 has no role ' + message.role + '; it knows user and assistant') -}}
    {%- endif -%}
{%- endfor -%}
""".strip()


class ChatGLMTokenizerError(ValueError):
    """A ChatGLM ``tokenizer.model`` that cannot be converted; the message names the file and the reason."""


def special_tokens_for(variant: str) -> tuple[str, ...]:
    """The special tokens ChatGLM appends after its SentencePiece vocabulary, in order."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ChatGLM variant {variant!r}; expected one of {VARIANTS}")
    return CHATGLM3_SPECIAL_TOKENS if variant == "chatglm3" else CHATGLM2_SPECIAL_TOKENS


def chat_template_for(variant: str) -> str:
    """The Jinja chat template of the native prompt format of ``variant``."""
    special_tokens_for(variant)  # validates the name
    return CHATGLM3_CHAT_TEMPLATE if variant == "chatglm3" else CHATGLM2_CHAT_TEMPLATE


def read_sentencepiece_model(path: str | Path) -> sp_model_pb2.ModelProto:
    """Parse a SentencePiece model file, failing with a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ChatGLMTokenizerError(
            f"{path}: no SentencePiece tokenizer file (ChatGLM ships tokenizer.model)"
        )
    data = path.read_bytes()
    proto = sp_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
        error = "" if proto.pieces else "it has no pieces"
    except Exception as exc:  # protobuf raises a DecodeError subclass that is not public API
        error = str(exc)
    if error:
        hint = ""
        if re.match(rb"[A-Za-z0-9+/=]+ \d+\r?\n", data[:200]):
            hint = " It is a tiktoken vocabulary (GLM-4 uses one), which this converter does not handle."
        raise ChatGLMTokenizerError(f"{path}: not a SentencePiece model ({error}).{hint}")
    if proto.trainer_spec.model_type not in (_UNIGRAM, _BPE):
        raise ChatGLMTokenizerError(
            f"{path}: SentencePiece model type {proto.trainer_spec.model_type} is not supported (BPE or Unigram)"
        )
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise ChatGLMTokenizerError(f"{path}: treat_whitespace_as_suffix=true is not supported")
    return proto


def _bpe_merges(proto: sp_model_pb2.ModelProto) -> list[tuple[str, str]]:
    """Merge rules equivalent to SentencePiece BPE, which merges the pair whose result scores highest.

    Every way of splitting a normal piece into two normal pieces is a merge; ranks follow the merged
    piece's score (descending, ties by id), so the lowest-rank merge HF's BPE applies is SentencePiece's.
    """
    normal = {p.piece for p in proto.pieces if p.type == _NORMAL}
    ranked = sorted(
        ((p.score, i, p.piece) for i, p in enumerate(proto.pieces) if p.type == _NORMAL and len(p.piece) > 1),
        key=lambda item: (-item[0], item[1]),
    )
    merges: list[tuple[str, str]] = []
    for _, _, piece in ranked:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((left, right))
    return merges


def sentencepiece_to_tokenizers(proto: sp_model_pb2.ModelProto) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes and decodes text like the SentencePiece model, same ids."""
    spec = proto.trainer_spec
    unk_id = spec.unk_id
    unk_piece = proto.pieces[unk_id].piece
    if spec.model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        if len(vocab) != len(proto.pieces):
            raise ChatGLMTokenizerError("SentencePiece model has duplicate pieces; ids cannot be preserved")
        model = BPE(
            vocab=vocab,
            merges=_bpe_merges(proto),
            unk_token=unk_piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
            dropout=None,
        )
    else:
        # Pieces SentencePiece never produces from text get a score no path will choose.
        scores = [(p.piece, p.score if p.type in (_NORMAL, _USER_DEFINED) else -1e9) for p in proto.pieces]
        model = Unigram(scores, unk_id=unk_id, byte_fallback=spec.byte_fallback)
    tokenizer = Tokenizer(model)

    norm = proto.normalizer_spec
    steps: list[normalizers.Normalizer] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        # SentencePiece trims and collapses ASCII spaces only (after the character map ran).
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE_SYMBOL))
    tokenizer.normalizer = normalizers.Sequence(steps)
    # No pre-tokenizer: SentencePiece encodes the whole normalized string; merges alone decide pieces.

    steps_out: list[decoders.Decoder] = [decoders.Replace(SPACE_SYMBOL, " ")]
    if spec.byte_fallback:
        steps_out.append(decoders.ByteFallback())
    steps_out.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        steps_out.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps_out)

    # Control pieces (<unk>, <s>, </s>) are special; user-defined pieces are matched whole, like SentencePiece.
    added = [
        AddedToken(p.piece, special=p.type in (_CONTROL, _UNKNOWN), normalized=False)
        for p in proto.pieces
        if p.type in (_CONTROL, _UNKNOWN, _USER_DEFINED)
    ]
    tokenizer.add_tokens(added)
    return tokenizer


def build_chatglm_tokenizer(
    sp_model_path: str | Path,
    variant: str = "chatglm3",
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Convert ChatGLM's ``tokenizer.model`` into a fast tokenizer with ChatGLM's special tokens and template.

    Normal-vocabulary ids equal the SentencePiece ids; the special tokens of ``variant`` follow at
    ``n_pieces, n_pieces + 1, ...``. ``eos_token`` is ``</s>``, ``pad_token`` and ``unk_token`` are
    ``<unk>``, padding is on the left (as ChatGLM's own tokenizer pads).
    """
    proto = read_sentencepiece_model(sp_model_path)
    tokenizer = sentencepiece_to_tokenizers(proto)
    n_pieces = len(proto.pieces)
    specials = special_tokens_for(variant)
    clashing = [t for t in specials if tokenizer.token_to_id(t) is not None]
    if clashing:
        raise ChatGLMTokenizerError(f"{sp_model_path}: SentencePiece vocabulary already contains {clashing}")
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, single_word=t in _WORD_LIKE_SPECIAL_TOKENS)
            for t in specials
        ]
    )
    for offset, token in enumerate(specials):
        if tokenizer.token_to_id(token) != n_pieces + offset:
            raise ChatGLMTokenizerError(
                f"{sp_model_path}: special token {token!r} got id {tokenizer.token_to_id(token)}, "
                f"expected {n_pieces + offset}"
            )

    spec = proto.trainer_spec
    piece = {i: p.piece for i, p in enumerate(proto.pieces)}
    eos = piece.get(spec.eos_id, "</s>") if spec.eos_id >= 0 else "</s>"
    bos = piece.get(spec.bos_id) if spec.bos_id >= 0 else None
    unk = piece[spec.unk_id]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=unk,  # ChatGLM pads with <unk> (id 0)
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length or int(1e30),
        add_bos_token=False,
        add_eos_token=False,
        extra_special_tokens=list(specials),
        chat_template=chat_template_for(variant),
    )
    logger.debug("ChatGLM tokenizer: %d pieces + %d special tokens (%s)", n_pieces, len(specials), variant)
    return fast
