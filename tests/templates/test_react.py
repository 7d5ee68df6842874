from chatforge.messages import Message, Role, ToolCall
from chatforge.templates import get_template
from chatforge.templates.react import ReActTemplate

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def test_react_renders_tools_actions_and_observations(tiny_tokenizer):
    template = get_template("react", tiny_tokenizer)
    assert isinstance(template, ReActTemplate)
    messages = [
        Message(Role.USER, "Who won?"),
        Message(Role.ASSISTANT, "Thought: search it.", tool_calls=[ToolCall("search", {"q": "winner"})]),
        Message(Role.OBSERVATION, "Team A"),
        Message(Role.ASSISTANT, "Team A won."),
    ]
    text = template.render_text(messages, TOOLS, add_generation_prompt=False)
    assert "search: Search the web" in text
    assert 'Thought: search it.\nAction: search\nAction Input: {"q": "winner"}' in text
    assert "Observation: Team A" in text
    assert "Final Answer: Team A won." in text
    rendered = template.render(messages, TOOLS, add_generation_prompt=False)
    trained = tiny_tokenizer.decode([i for i, m in zip(rendered.ids, rendered.loss_mask) if m])
    assert (
        "Observation" not in trained
        and "Action: search" in trained
        and "Final Answer: Team A won." in trained
    )
    assert "Observation:" in template.stop_strings


def test_react_parse_and_stream(tiny_tokenizer):
    template = get_template("react", tiny_tokenizer)
    call = template.parse('Thought: look up.\nAction: search\nAction Input: {"q": "x"}', TOOLS)
    assert call.content == "look up." and call.tool_calls[0].arguments == {"q": "x"}
    final = template.parse("Thought: done.\nFinal Answer: 42", TOOLS)
    assert final.content == "42" and not final.tool_calls
    parser = template.stream_parser(TOOLS)
    shown = "".join(parser.feed(p) for p in ["Thought: ok\nAct", "ion: search\nAction Input: {}"])
    rest, message = parser.finish()
    assert shown + rest == "ok" and message.tool_calls[0].name == "search"
    parser = template.stream_parser(TOOLS)
    shown = "".join(parser.feed(p) for p in ["Thought: ok\nFinal ", "Answer: 4", "2"])
    rest, message = parser.finish()
    assert shown + rest == "42"
