"""Tool calls, whole and streamed, against the scripted tiny model (see serve_models.py): the
model really generates ``<tool_call>{...}</tool_call>`` and the server parses it."""

from __future__ import annotations

import json

import pytest
from serve_models import TOOL, TOOL_ARGUMENTS, expected_arguments_json

ASK = [{"role": "user", "content": "What is the weather in Beijing?"}]


def get_weather(city_name: str, unit: str = "celsius", note: str = "") -> str:
    return json.dumps({"city": city_name, "temperature": 21, "unit": unit})


def test_tool_call_non_stream(tool_server):
    out = tool_server.client().chat.completions.create(
        model="scripted", messages=ASK, tools=[TOOL], temperature=0, max_tokens=16
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS


def test_tool_call_stream_deltas_assemble_exactly(tool_server):
    stream = tool_server.client().chat.completions.create(
        model="scripted", messages=ASK, tools=[TOOL], temperature=0, max_tokens=16, stream=True
    )
    chunks = [c for c in stream]
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0][0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    for later in deltas[1:]:
        assert later[0].index == 0 and later[0].id is None and later[0].function.name is None
    arguments = "".join(d[0].function.arguments for d in deltas)
    assert arguments == expected_arguments_json()
    assert len(deltas) > 2  # arguments really come in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # no markup leaked


def test_tool_round_trip(tool_server):
    client = tool_server.client()
    first = client.chat.completions.create(model="scripted", messages=ASK, tools=[TOOL], temperature=0)
    call = first.choices[0].message.tool_calls[0]
    result = get_weather(**json.loads(call.function.arguments))
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second = client.chat.completions.create(model="scripted", messages=history, tools=[TOOL], temperature=0)
    # The history (assistant tool call + tool result) was rendered into the prompt. This
    # scripted model answers every turn with the same call, so the reply is a call again.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + len(result) // 4
    assert second.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_required(tool_server):
    client = tool_server.client()
    required = client.chat.completions.create(
        model="scripted", messages=ASK, tools=[TOOL], tool_choice="required", temperature=0
    )
    assert required.choices[0].message.tool_calls[0].function.name == "get_weather"
    named = client.chat.completions.create(
        model="scripted", messages=ASK, tools=[TOOL], temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert [c.choices[0].finish_reason for c in named if c.choices][-1] == "tool_calls"
    none = client.chat.completions.create(
        model="scripted", messages=ASK, tools=[TOOL], tool_choice="none", temperature=0, max_tokens=16
    )
    # With tools not offered the prompt is shorter (no tool schema in the system prompt).
    assert none.usage.prompt_tokens < required.usage.prompt_tokens


def test_parallel_tool_calls_false_keeps_one(tool_server):
    out = tool_server.client().chat.completions.create(
        model="scripted", messages=ASK, tools=[TOOL], parallel_tool_calls=False, temperature=0
    )
    assert len(out.choices[0].message.tool_calls) == 1


def test_langchain_chat_openai(chat_server, tool_server):
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool as lc_tool
    from langchain_openai import ChatOpenAI
    from serve_support import KEY

    llm = ChatOpenAI(base_url=chat_server.base_url, api_key=KEY, model="default", max_tokens=5,
                     temperature=0, max_retries=0)
    assert isinstance(llm.invoke("Hello").content, str)
    assert "".join(c.content for c in llm.stream("Hello"))

    @lc_tool
    def get_weather_tool(city_name: str, unit: str = "celsius", note: str = "") -> str:
        """Current weather in a city."""
        return get_weather(city_name, unit, note)

    get_weather_tool.name = "get_weather"
    agent = ChatOpenAI(base_url=tool_server.base_url, api_key=KEY, model="scripted", temperature=0,
                       max_retries=0).bind_tools([get_weather_tool])
    messages = [HumanMessage("Weather in Beijing?")]
    ai = agent.invoke(messages)
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and call["args"] == TOOL_ARGUMENTS
    messages += [ai, ToolMessage(get_weather_tool.invoke(call["args"]), tool_call_id=call["id"])]
    again = agent.invoke(messages)
    assert again.response_metadata["finish_reason"] == "tool_calls"
