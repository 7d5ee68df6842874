"""The ChatGLM3-style API and ChatSession, on a tiny random model."""

from chatforge.chat import ChatSession
from chatforge.engines.base import KVState

GREEDY = dict(do_sample=False, max_new_tokens=8)


def test_chat_returns_response_and_history(tiny_chat):
    response, history = tiny_chat.chat("Hello", history=[], **GREEDY)
    assert isinstance(response, str)
    assert history[0] == {"role": "user", "content": "Hello"}
    assert history[1]["role"] == "assistant" and history[1]["content"] == response
    response2, history2 = tiny_chat.chat("And you?", history=history, **GREEDY)
    assert len(history2) == 4 and history2[:2] == history[:2]


def test_stream_chat_yields_a_growing_response(tiny_chat):
    outputs = list(tiny_chat.stream_chat("Hello", history=None, **GREEDY))
    texts = [o[0] for o in outputs]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    final, history = outputs[-1]
    assert history[-1]["content"] == final


def test_past_key_values_carry_the_cache_across_turns(tiny_chat):
    response, history, pkv = tiny_chat.chat("Hello", history=[], return_past_key_values=True, **GREEDY)
    assert isinstance(pkv, KVState) and len(pkv) > 0
    events = list(
        tiny_chat.stream_chat(
            "More", history=history, past_key_values=pkv, return_past_key_values=True, **GREEDY
        )
    )
    assert events[-1][2] is pkv
    # Same answer as without the cache.
    fresh, _ = tiny_chat.chat("More", history=history, **GREEDY)
    assert events[-1][0] == fresh


def test_session_turn_two_computes_only_the_new_tokens(tiny_chat):
    session = ChatSession(tiny_chat, system="Be brief.")
    session.send("Hello", **GREEDY)
    first = session.last_stats
    turn1_prompt = tiny_chat.template.render(session.messages[:2]).ids
    session.send("What is the weather?", **GREEDY)
    second = session.last_stats
    turn2_prompt = tiny_chat.template.render(session.messages[:4]).ids
    assert first.reused_tokens == 0 and first.computed_tokens == len(turn1_prompt)
    # Turn 1 computed its prompt and all generated tokens but the last (sampled, never fed back).
    assert second.reused_tokens == len(turn1_prompt) + first.completion_tokens - 1
    assert second.computed_tokens == len(turn2_prompt) - second.reused_tokens
    assert second.computed_tokens < len(turn2_prompt) // 2


def test_session_clear_and_system(tiny_chat):
    session = tiny_chat.session(system="A")
    session.send("Hi", **GREEDY)
    session.set_system("B")
    session.clear()
    assert [m.content for m in session.messages] == ["B"]
    assert len(session.state) == 0


def test_unknown_generation_argument_is_refused(tiny_chat):
    import pytest

    with pytest.raises(TypeError, match="unknown generation argument"):
        tiny_chat.chat("Hi", temprature=0.5)
