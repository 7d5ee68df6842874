"""The agent loop with the real embedded default model (greedy): a tool round trip and
a plot made by the code interpreter. Marked ``integration``."""

from typing import Annotated

import pytest

from chatforge.agent import CodeInterpreter, InterpreterConfig, tool
from chatforge.agent.loop import Agent, EventKind

pytestmark = pytest.mark.integration


@tool
def get_weather(city_name: Annotated[str, "The name of the city to be queried", True]) -> dict:
    """Get the current weather for `city_name`."""
    return {"city": city_name, "weather": "sunny", "temperature_celsius": 23}


def test_weather_question_calls_the_tool_and_answers_with_its_result(default_model):
    result = Agent(default_model, [get_weather], mode="tools", do_sample=False, max_new_tokens=100).run(
        "What's the weather like in Beijing today?"
    )
    calls = [e.call for e in result.events if e.kind is EventKind.TOOL_CALL]
    assert calls and calls[0].name == "get_weather"
    assert calls[0].arguments["city_name"].lower() == "beijing"
    assert "23" in result.answer and "sunny" in result.answer.lower(), result.answer


def test_plot_request_produces_a_png(default_model, tmp_path):
    with CodeInterpreter(InterpreterConfig(root_dir=tmp_path, timeout=60)) as interpreter:
        agent = Agent(
            default_model, mode="code", interpreter=interpreter, do_sample=False, max_new_tokens=300
        )
        result = agent.run("plot sin(x) from 0 to 2π and save it to sin.png")
        saved = agent.code_session.workdir / "sin.png"
        assert any(e.kind is EventKind.CODE for e in result.events)
        pngs = result.images + ([saved.read_bytes()] if saved.exists() else [])
        assert pngs and all(p.startswith(b"\x89PNG") for p in pngs), result.answer


def test_a_question_that_needs_computing_is_answered_with_the_kernels_value(default_model, tmp_path):
    with CodeInterpreter(InterpreterConfig(root_dir=tmp_path, timeout=60)) as interpreter:
        agent = Agent(
            default_model, mode="code", interpreter=interpreter, do_sample=False, max_new_tokens=300
        )
        result = agent.run("What is 2 to the power of 64, exactly?")
    outputs = [e.text for e in result.events if e.kind is EventKind.OUTPUT]
    assert any("18446744073709551616" in o for o in outputs), outputs
    assert "18446744073709551616" in result.answer.replace(",", ""), result.answer
