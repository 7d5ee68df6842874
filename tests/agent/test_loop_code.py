"""Code mode with a real Jupyter kernel, driven by a scripted engine."""

import pytest
from scripted import scripted_model

from chatforge.agent import CodeInterpreter, InterpreterConfig
from chatforge.agent.loop import Agent, EventKind


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory):
    with CodeInterpreter(
        InterpreterConfig(root_dir=tmp_path_factory.mktemp("code"), timeout=20, max_threads=2)
    ) as it:
        yield it


PLOT = """```python
import numpy as np, matplotlib.pyplot as plt
print("drawing")
x = np.linspace(0, 2 * np.pi, 50)
plt.plot(x, np.sin(x))
plt.savefig("sin.png")
plt.show()
```"""


def test_code_runs_and_outputs_and_plots_come_back(tiny_tokenizer, interpreter):
    model = scripted_model(tiny_tokenizer, [PLOT, "Saved the plot to sin.png."])
    agent = Agent(model, mode="code", interpreter=interpreter, session_id="plot")
    result = agent.run("plot sin(x) from 0 to 2π and save it to sin.png")
    kinds = [e.kind for e in result.events]
    assert EventKind.CODE in kinds and EventKind.IMAGE in kinds
    output = next(e for e in result.events if e.kind is EventKind.OUTPUT).text
    assert "drawing" in output and "[Image]" in output
    assert result.images[0].startswith(b"\x89PNG")
    assert (agent.code_session.workdir / "sin.png").exists()
    assert "```result\ndrawing" in tiny_tokenizer.decode(model.engine.prompts[1])
    assert result.answer == "Saved the plot to sin.png."


def test_errors_go_back_to_the_model_without_ansi_codes(tiny_tokenizer, interpreter):
    model = scripted_model(
        tiny_tokenizer, ["```python\n1/0\n```", "```python\nprint(1/1)\n```", "It is 1.0."]
    )
    result = Agent(model, mode="code", interpreter=interpreter, session_id="err").run("divide")
    outputs = [e.text for e in result.events if e.kind is EventKind.OUTPUT]
    assert "ZeroDivisionError" in outputs[0] and "\x1b[" not in outputs[0]
    assert outputs[1].strip() == "1.0"
    assert result.answer == "It is 1.0."


def test_uploaded_files_are_announced(tiny_tokenizer, interpreter):
    model = scripted_model(tiny_tokenizer, ["```python\nprint(open('data.csv').read())\n```", "Two rows."])
    agent = Agent(model, mode="code", interpreter=interpreter, session_id="upload")
    agent.upload("data.csv", "a,b\n1,2\n")
    result = agent.run("What is in my file?")
    assert "data.csv" in result.messages[1].content
    assert "a,b" in next(e for e in result.events if e.kind is EventKind.OUTPUT).text


def test_numpy_and_pyplot_are_preimported(tiny_tokenizer, interpreter):
    model = scripted_model(tiny_tokenizer, ["```python\nprint(round(np.pi, 2), plt.__name__)\n```", "ok"])
    result = Agent(model, mode="code", interpreter=interpreter, session_id="prelude").run("pi?")
    assert (
        next(e for e in result.events if e.kind is EventKind.OUTPUT).text.strip() == "3.14 matplotlib.pyplot"
    )


def test_an_answer_from_memory_is_sent_back_to_be_computed(tiny_tokenizer, interpreter):
    replies = ["The 30th Fibonacci number is 55.", FIB, "It is 832040."]
    model = scripted_model(tiny_tokenizer, replies)
    result = Agent(model, mode="code", interpreter=interpreter, session_id="memory").run("30th Fibonacci?")
    assert "55 without running any code" in tiny_tokenizer.decode(model.engine.prompts[1])
    assert next(e for e in result.events if e.kind is EventKind.OUTPUT).text.strip() == "832040"
    assert result.answer == "It is 832040." and result.rounds == 3


def test_an_answer_with_the_printed_value_is_final(tiny_tokenizer, interpreter):
    model = scripted_model(tiny_tokenizer, [FIB, "F(30) = 832,040."])
    result = Agent(model, mode="code", interpreter=interpreter, session_id="printed").run("30th Fibonacci?")
    assert result.answer == "F(30) = 832,040." and result.rounds == 2


def test_silent_code_and_repeated_failures_are_pointed_out(tiny_tokenizer, interpreter):
    prose = "```python\nThe chart shows three bars.\n```"
    replies = ["```python\nx = 6 * 7\n```", prose, prose, "The chart shows three bars."]
    model = scripted_model(tiny_tokenizer, replies)
    result = Agent(model, mode="code", interpreter=interpreter, session_id="fails").run("chart?")
    seen = tiny_tokenizer.decode(model.engine.prompts[3])
    assert "The code printed nothing: print the values you need." in seen
    assert "The code failed: fix it and run it again." in seen
    assert "failed the same way before" in seen
    assert result.answer == "The chart shows three bars."


FIB = "```python\na, b = 1, 1\nfor _ in range(28):\n    a, b = b, a + b\nprint(b)\n```"
