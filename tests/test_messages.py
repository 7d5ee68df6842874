import pytest

from chatforge.messages import (
    INTERPRETER,
    Message,
    MessageError,
    Role,
    ToolCall,
    from_history,
    from_openai,
    normalize_tool_schema,
    to_history,
    to_openai,
)

OPENAI_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
    {"role": "assistant", "content": "Clear skies."},
]


def test_openai_round_trip_is_lossless():
    messages = from_openai(OPENAI_CONVERSATION)
    assert [m.role for m in messages] == [
        Role.SYSTEM,
        Role.USER,
        Role.ASSISTANT,
        Role.OBSERVATION,
        Role.ASSISTANT,
    ]
    assert messages[1].content == "Weather in Paris?"
    assert messages[2].tool_calls[0].arguments == {"city": "Paris"}
    back = to_openai(messages)
    assert back[2]["tool_calls"] == OPENAI_CONVERSATION[2]["tool_calls"]
    assert back[3] == {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"}
    assert from_openai(back) == messages


def test_history_round_trip_is_lossless():
    messages = from_openai(OPENAI_CONVERSATION)
    messages.append(Message(Role.ASSISTANT, "print(1)", metadata=INTERPRETER))
    history = to_history(messages)
    assert history[2]["metadata"] == "get_weather"
    assert history[-1] == {"role": "assistant", "content": "print(1)", "metadata": "interpreter"}
    assert from_history(history) == messages


def test_chatglm3_history_forms():
    tools = [{"name": "get_weather", "description": "d", "parameters": {}}]
    history = [
        {"role": "system", "content": "Use tools.", "tools": tools},
        {"role": "user", "content": "北京天气"},
        # What ChatGLM3 itself stores for a call: the tool name as metadata, python code as content.
        {
            "role": "assistant",
            "metadata": "get_weather",
            "content": "```python\ntool_call(city_name='北京')\n```",
        },
        {"role": "observation", "content": "晴"},
        # What chat() returns as a response, put back into history by a caller.
        {"role": "assistant", "content": {"name": "get_weather", "parameters": {"city_name": "上海"}}},
    ]
    messages = from_history(history)
    assert messages[0].tools == tools
    assert messages[2].tool_calls[0].name == "get_weather"
    assert messages[2].tool_calls[0].arguments == {"city_name": "北京"}
    assert messages[3].role is Role.OBSERVATION
    assert messages[4].tool_calls[0].arguments == {"city_name": "上海"}


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"content": "x"}, "messages[0].role: field required"),
        ({"role": "wizard", "content": "x"}, "unknown role 'wizard'"),
        ({"role": "user", "content": 5}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "image_url"}]}, "messages[0].content[0]"),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
            "messages[0].tool_calls[0].function.arguments: not valid JSON",
        ),
    ],
)
def test_malformed_messages_name_the_field(bad, where):
    with pytest.raises(MessageError, match=__import__("re").escape(where)):
        from_openai([bad])


def test_role_aliases_and_tool_schema_forms():
    assert Role.parse("tool") is Role.OBSERVATION
    bare = {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}
    assert normalize_tool_schema(bare) == {"type": "function", "function": bare}
    assert normalize_tool_schema({"type": "function", "function": bare}) == {
        "type": "function",
        "function": bare,
    }
    call = ToolCall("f", {"x": "中"})
    assert call.arguments_json() == '{"x": "中"}'
