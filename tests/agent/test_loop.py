"""The agent loop's control flow, driven by a scripted engine (fixed replies)."""

import json
import time
from typing import Annotated

import pytest
from scripted import scripted_model

from chatforge.agent import tool
from chatforge.agent.loop import Agent, EventKind
from chatforge.messages import Role


@tool
def get_weather(city_name: Annotated[str, "The name of the city", True]) -> dict:
    """Get the weather for a city."""
    return {"city": city_name, "sky": "sunny", "temperature": 22}


@tool(timeout=0.3)
def slow() -> str:
    """Sleeps too long."""
    time.sleep(2)
    return "late"


@tool
def boom(x: int) -> str:
    """Raises."""
    raise RuntimeError(f"broken for {x}")


@tool(max_result_chars=50)
def huge() -> str:
    """Returns a lot."""
    return "x" * 10_000


def call(name, **arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def kinds(events):
    """Event kinds in order, a run of text deltas counted once."""
    out = []
    for e in events:
        if not out or out[-1] is not e.kind or e.kind is not EventKind.TEXT:
            out.append(e.kind)
    return out


def test_tool_call_then_answer_uses_the_result(tiny_tokenizer):
    model = scripted_model(
        tiny_tokenizer, [call("get_weather", city_name="Beijing"), "It is sunny, 22 degrees."]
    )
    agent = Agent(model, [get_weather], mode="tools", do_sample=False)
    result = agent.run("Weather in Beijing?")
    assert result.answer == "It is sunny, 22 degrees."
    assert kinds(result.events) == [
        EventKind.TOOL_CALL,
        EventKind.TOOL_RESULT,
        EventKind.TEXT,
        EventKind.FINAL,
    ]
    assert result.events[0].call.arguments == {"city_name": "Beijing"}
    assert json.loads(result.events[1].text)["sky"] == "sunny"
    observation = [m for m in result.messages if m.role is Role.OBSERVATION][0]
    assert observation.tool_call_id == result.events[0].call.id
    # The second generation saw the tool result in the model's own format.
    second_prompt = tiny_tokenizer.decode(model.engine.prompts[1])
    assert "<tool_response>" in second_prompt and '"sky": "sunny"' in second_prompt
    assert result.rounds == 2


@pytest.mark.parametrize(
    "reply, expected",
    [
        (call("get_weather"), "argument 'city_name' is required"),
        (call("get_weather", city_name=5), "city_name"),
        (call("teleport", where="moon"), "unknown tool 'teleport'"),
        (call("boom", x=3), "broken for 3"),
        (call("slow"), "timed out"),
    ],
)
def test_execution_problems_become_observations(tiny_tokenizer, reply, expected):
    model = scripted_model(tiny_tokenizer, [reply, "Sorry."])
    agent = Agent(model, [get_weather, slow, boom], mode="tools")
    result = agent.run("go")
    tool_result = next(e for e in result.events if e.kind is EventKind.TOOL_RESULT)
    assert tool_result.result.is_error
    assert expected in tool_result.text
    assert result.answer == "Sorry."


def test_results_are_truncated_with_a_visible_marker(tiny_tokenizer):
    model = scripted_model(tiny_tokenizer, [call("huge"), "ok"])
    result = Agent(model, [huge], mode="tools").run("go")
    text = next(e for e in result.events if e.kind is EventKind.TOOL_RESULT).text
    assert len(text) < 200 and "truncated" in text


def test_several_calls_in_one_reply_run_in_order(tiny_tokenizer):
    reply = call("get_weather", city_name="Paris") + "\n" + call("get_weather", city_name="Rome")
    model = scripted_model(tiny_tokenizer, [reply, "Both sunny."])
    result = Agent(model, [get_weather], mode="tools").run("Paris and Rome?")
    results = [json.loads(e.text)["city"] for e in result.events if e.kind is EventKind.TOOL_RESULT]
    assert results == ["Paris", "Rome"]
    assert [m.role for m in result.messages[-4:]] == [
        Role.ASSISTANT,
        Role.OBSERVATION,
        Role.OBSERVATION,
        Role.ASSISTANT,
    ]


def test_round_limit_stops_a_model_that_never_answers(tiny_tokenizer):
    model = scripted_model(tiny_tokenizer, [call("get_weather", city_name="X")] * 3)
    result = Agent(model, [get_weather], mode="tools", max_rounds=3).run("loop forever")
    assert result.stopped_by_limit and "stopped after 3 rounds" in result.answer
    assert result.rounds == 3


def test_fenced_json_tool_calls_work_like_tagged_ones(tiny_tokenizer):
    fenced = '```json\n{"name": "get_weather", "arguments": {"city_name": "Oslo"}}\n```'
    model = scripted_model(tiny_tokenizer, [fenced, "Cold."])
    result = Agent(model, [get_weather], mode="tools").run("Oslo?")
    assert result.events[0].call.arguments == {"city_name": "Oslo"}
    assert result.answer == "Cold."


def test_streamed_text_never_shows_tool_call_markup(tiny_tokenizer):
    model = scripted_model(
        tiny_tokenizer, ["Let me check. " + call("get_weather", city_name="Oslo"), "Cold."]
    )
    events = list(Agent(model, [get_weather], mode="tools").stream("Oslo?"))
    shown = "".join(e.text for e in events if e.kind is EventKind.TEXT)
    assert "<tool_call>" not in shown and "{" not in shown
    assert shown == "Let me check. Cold."


def test_react_template_loop(tiny_tokenizer):
    replies = [
        'Thought: need weather.\nAction: get_weather\nAction Input: {"city_name": "Lima"}',
        "Thought: done.\nFinal Answer: Warm.",
    ]
    model = scripted_model(tiny_tokenizer, replies, template="react")
    result = Agent(model, [get_weather], mode="tools").run("Lima?")
    assert result.answer == "Warm."
    assert "Observation:" in tiny_tokenizer.decode(model.engine.prompts[1])


def test_chat_mode_never_runs_tools(tiny_tokenizer):
    model = scripted_model(tiny_tokenizer, [call("get_weather", city_name="X")])
    result = Agent(model, [get_weather], mode="chat").run("hi")
    assert not any(e.kind is EventKind.TOOL_RESULT for e in result.events)


def test_invalid_mode_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="mode must be one of"):
        Agent(scripted_model(tiny_tokenizer, []), mode="magic")
