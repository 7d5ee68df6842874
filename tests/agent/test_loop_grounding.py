"""How the agent loop grounds answers: failed calls come back with how to correct them,
and a final answer whose numbers come from nowhere is sent back once. Scripted engine."""

import json
from typing import Annotated

from scripted import scripted_model

from chatforge.agent import tool
from chatforge.agent.loop import Agent, EventKind, describe_parameters
from chatforge.agent.tools.builtin import calculator
from chatforge.messages import Role


@tool
def get_weather(city_name: Annotated[str, "The name of the city", True]) -> dict:
    """Get the weather for a city."""
    return {"city": city_name, "sky": "sunny", "temperature": 22}


def call(name, **arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def prompt(model, index):
    return model.engine.tokenizer.decode(model.engine.prompts[index])


def test_a_bad_argument_comes_back_with_the_parameters_and_the_corrected_call_runs(tiny_tokenizer):
    replies = [
        call("calculator", expression="37 * 49 + 12", type="object"),
        call("calculator", expression="37 * 49 + 12"),
        "37 * 49 + 12 = 1825.",
    ]
    model = scripted_model(tiny_tokenizer, replies)
    result = Agent(model, [calculator], mode="tools").run("What is 37 times 49 plus 12?")
    assert [e.text for e in result.events if e.kind is EventKind.TOOL_RESULT][1] == "1825"
    seen = prompt(model, 1)
    assert "unexpected argument 'type'" in seen
    assert "there is no result yet" in seen
    assert "expression (string, required), and no other argument" in seen
    assert result.answer == "37 * 49 + 12 = 1825." and result.rounds == 3


def test_a_repeated_failing_call_is_pointed_out(tiny_tokenizer):
    model = scripted_model(tiny_tokenizer, [call("get_weather"), call("get_weather"), "Sorry."])
    result = Agent(model, [get_weather], mode="tools").run("weather?")
    first, second = [m.content for m in result.messages if m.role is Role.OBSERVATION]
    assert "already failed" not in first
    assert "same as one that already failed" in second
    assert result.answer == "Sorry."


def test_an_answer_that_replaces_the_result_is_sent_back_once(tiny_tokenizer):
    replies = [call("get_weather", city_name="Oslo"), "It is 30 degrees.", "It is 22 degrees."]
    model = scripted_model(tiny_tokenizer, replies)
    result = Agent(model, [get_weather], mode="tools").run("How warm is Oslo?")
    check = result.messages[-2]
    assert check.role is Role.USER and "30" in check.content and "the tools returned" in check.content
    assert result.answer == "It is 22 degrees." and result.rounds == 3
    # The user saw both answers stream: the check is part of the transcript, not hidden.
    shown = "".join(e.text for e in result.events if e.kind is EventKind.TEXT)
    assert shown == "It is 30 degrees.It is 22 degrees."


def test_the_second_answer_stands_even_if_still_ungrounded(tiny_tokenizer):
    replies = [call("get_weather", city_name="Oslo"), "30 degrees.", "Still 30 degrees."]
    result = Agent(scripted_model(tiny_tokenizer, replies), [get_weather], mode="tools").run("Oslo?")
    assert result.answer == "Still 30 degrees." and not result.stopped_by_limit


def test_an_answer_without_a_tool_call_is_asked_to_call_one(tiny_tokenizer):
    model = scripted_model(
        tiny_tokenizer, ["It is 1763.", call("calculator", expression="37*49+12"), "1825."]
    )
    result = Agent(model, [calculator], mode="tools").run("37 times 49 plus 12?")
    assert "without calling any tool" in result.messages[3].content
    assert result.answer == "1825."


def test_grounded_answers_and_answers_without_numbers_are_final_at_once(tiny_tokenizer):
    for answer in ("Sunny, 22 degrees in Oslo.", "Hello! How can I help?"):
        model = scripted_model(tiny_tokenizer, [call("get_weather", city_name="Oslo"), answer])
        result = Agent(model, [get_weather], mode="tools").run("Oslo?")
        assert result.answer == answer and result.rounds == 2


def test_no_check_in_the_last_round_in_chat_mode_or_when_turned_off(tiny_tokenizer):
    replies = [call("get_weather", city_name="Oslo"), "30 degrees."]
    limited = Agent(scripted_model(tiny_tokenizer, replies), [get_weather], mode="tools", max_rounds=2)
    assert limited.run("Oslo?").answer == "30 degrees."
    off = Agent(scripted_model(tiny_tokenizer, replies), [get_weather], mode="tools", check_answers=False)
    assert off.run("Oslo?").answer == "30 degrees."
    chat = Agent(scripted_model(tiny_tokenizer, ["It is 55."]), mode="chat")
    assert chat.run("fib(10)?").answer == "It is 55."


def test_numbers_from_earlier_turns_are_grounded(tiny_tokenizer):
    replies = [call("get_weather", city_name="Oslo"), "22 degrees.", "As I said, 22 degrees."]
    agent = Agent(scripted_model(tiny_tokenizer, replies), [get_weather], mode="tools")
    agent.run("Oslo?")
    assert agent.run("Say it again?").answer == "As I said, 22 degrees."


def test_parameters_are_described_in_a_line():
    assert (
        describe_parameters(get_weather.parameters) == "city_name (string, required), and no other argument"
    )
    assert describe_parameters({"type": "object", "properties": {}}) == "it takes no arguments"
