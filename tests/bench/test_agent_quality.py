"""benchmarks/agent_quality.py's BFCL part: BFCL's function docs converted to OpenAI tools,
replies converted to BFCL's model-output form and scored by BFCL's own checker, and (marked
integration) the script end to end through a real ``chatforge serve`` on the default model."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "bfcl_eval", reason="bfcl-eval is not installed (pip install --no-deps bfcl-eval; make test does)"
)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import agent_quality  # noqa: E402
import bfcl_support as bfcl  # noqa: E402


def wire(name: str, arguments: dict | str) -> dict:
    """An OpenAI tool call as the client's ``model_dump`` gives it."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}


def right_call(answer: dict) -> dict:
    """A call built from BFCL's possible answers: each argument's first accepted value,
    optional ones ("" among the answers) left out."""
    ((name, params),) = answer.items()
    args = {k: values[0] for k, values in params.items() if values and values[0] != ""}
    return wire(name.replace(".", "_"), args)


def sample(category: str, index: int = 0) -> bfcl.Sample:
    return bfcl.load_samples(category, index + 1)[index]


def test_bfcl_function_docs_become_openai_tools_with_json_schema_types():
    functions = [
        {
            "name": "geo.route_plan",
            "description": "Plan a route.",
            "parameters": {
                "type": "dict",
                "properties": {
                    "stops": {"type": "tuple", "items": {"type": "string"}, "description": "Stops."},
                    "weights": {"type": "array", "items": {"type": "float"}, "description": "Weights."},
                    "speed": {"type": "float", "description": "Speed."},
                    "meta": {"type": "dict", "properties": {"tag": {"type": "any", "description": "A tag."}}},
                    "mode": {"type": "string", "enum": ["car", "bike"], "description": "Mode."},
                    "legs": {"type": "integer", "description": "Legs."},
                },
                "required": ["stops"],
            },
        }
    ]
    before = copy.deepcopy(functions)
    (tool,) = bfcl.to_openai_tools(functions)
    assert functions == before  # BFCL's conversion works on a copy
    assert tool["type"] == "function"
    fn = tool["function"]
    assert fn["name"] == "geo_route_plan"  # OpenAI's names allow no "."
    schema = fn["parameters"]
    assert schema["type"] == "object" and schema["required"] == ["stops"]
    props = schema["properties"]
    assert props["stops"] == {"type": "array", "items": {"type": "string"}, "description": "Stops."}
    assert props["weights"]["items"] == {"type": "number"}
    assert props["speed"]["type"] == "number" and props["speed"]["format"] == "float"
    assert props["meta"]["type"] == "object" and props["meta"]["properties"]["tag"]["type"] == "string"
    assert props["mode"]["enum"] == ["car", "bike"] and props["legs"]["type"] == "integer"


def test_bfcl_samples_carry_bfcl_own_language_hint_and_answers():
    samples = bfcl.load_samples("parallel_multiple", 3)
    assert [s.id for s in samples] == [f"parallel_multiple_{i}" for i in range(3)]
    assert all(f["description"].endswith("Python 3 syntax.") for s in samples for f in s.functions)
    assert all(s.answer and s.messages[-1]["role"] == "user" for s in samples)
    assert bfcl.load_samples("irrelevance", 1)[0].answer is None
    with pytest.raises(ValueError, match="unknown BFCL category 'simple_java'"):
        bfcl.load_samples("simple_java", 1)


def test_replies_become_bfcl_model_output_and_decode_as_its_openai_handler_does():
    calls = [wire("math_factorial", {"number": 5}), wire("math_hypot", '{"x": 3, "y": 4}')]
    output = bfcl.to_model_output(calls, None)
    assert output == [{"math_factorial": '{"number": 5}'}, {"math_hypot": '{"x": 3, "y": 4}'}]
    assert bfcl.decode(output) == [{"math_factorial": {"number": 5}}, {"math_hypot": {"x": 3, "y": 4}}]
    assert bfcl.to_model_output([], "No tool fits.") == "No tool fits."
    assert bfcl.to_model_output(None, None) == ""
    with pytest.raises(ValueError, match="no tool call"):
        bfcl.decode("No tool fits.")
    with pytest.raises(ValueError, match="arguments of math_hypot are not JSON"):
        bfcl.decode([{"math_hypot": '{"x": 3,'}])


def test_the_checker_scores_right_calls_true_and_wrong_ones_false():
    simple = sample("simple_python", 1)  # math.factorial(number=5)
    right = right_call(simple.answer[0])
    assert right["function"]["name"] == "math_factorial"
    assert bfcl.score(simple, bfcl.to_model_output([right], None)).passed
    wrong = bfcl.score(simple, bfcl.to_model_output([wire("math_factorial", {"number": 6})], None))
    assert not wrong.passed and wrong.error_type == "value_error:others" and "6" in wrong.error
    unknown_key = bfcl.score(
        simple, bfcl.to_model_output([wire("math_factorial", {"number": 5, "type": "object"})], None)
    )
    assert not unknown_key.passed and "type" in unknown_key.error
    text = bfcl.score(simple, bfcl.to_model_output([], "The factorial of 5 is 120."))
    assert not text.passed and text.error_type == "ast_decoder:decoder_failed"
    broken = bfcl.score(simple, [{"math_factorial": '{"number": '}])
    assert not broken.passed and broken.error_type == "ast_decoder:decoder_failed"


def test_parallel_calls_are_scored_in_any_order_and_counted():
    parallel = sample("parallel")
    calls = [right_call(a) for a in parallel.answer]
    assert len(calls) >= 2
    assert bfcl.score(parallel, bfcl.to_model_output(calls[::-1], None)).passed
    one = bfcl.score(parallel, bfcl.to_model_output(calls[:1], None))
    assert not one.passed and one.error_type == "parallel_function_checker_no_order:wrong_count"


def test_multiple_needs_the_right_function_among_several():
    multiple = sample("multiple")
    assert len(multiple.functions) >= 2
    right = right_call(multiple.answer[0])
    assert bfcl.score(multiple, bfcl.to_model_output([right], None)).passed
    other = next(
        f["name"] for f in multiple.functions if f["name"].replace(".", "_") != right["function"]["name"]
    )
    swapped = wire(other.replace(".", "_"), json.loads(right["function"]["arguments"]))
    assert not bfcl.score(multiple, bfcl.to_model_output([swapped], None)).passed


def test_irrelevance_is_correct_when_no_call_is_made():
    irrelevant = sample("irrelevance")
    assert bfcl.score(irrelevant, bfcl.to_model_output([], "None of the tools fits.")).passed
    assert bfcl.score(irrelevant, "").passed
    name = irrelevant.functions[0]["name"].replace(".", "_")
    called = bfcl.score(irrelevant, bfcl.to_model_output([wire(name, {})], None))
    assert not called.passed and called.error_type == "irrelevance_error:decoder_success"


def test_summary_and_tables():
    rows = [
        {"category": "parallel", "passed": True, "decode_tps": 10.0},
        {"category": "parallel", "passed": False, "decode_tps": 20.0},
        {"category": "parallel", "passed": False, "decode_tps": None},
        {"category": "irrelevance", "passed": True, "decode_tps": None},
    ]
    summary = agent_quality.summarize(rows, ["parallel", "irrelevance"])
    assert summary["parallel"] == {"passed": 1, "total": 3, "decode_tps_median": 15.0, "speed_samples": 2}
    assert summary["irrelevance"]["decode_tps_median"] is None
    assert summary["all"]["passed"] == 2 and summary["all"]["total"] == 4
    table = agent_quality.bfcl_table("constrain on", summary)
    assert "| parallel | 1/3 | 33.3% | 15.0 | 2 |" in table
    assert "| irrelevance | 1/1 | 100.0% | - | 0 |" in table
    slower = copy.deepcopy(summary)
    slower["parallel"]["decode_tps_median"] = 30.0
    assert "| parallel | 1/3 (33.3%) | 1/3 (33.3%) | 15.0 | 30.0 | 0.50 |" in agent_quality.comparison_table(
        summary, slower
    )


def test_constrain_modes_follow_what_serve_offers():
    assert agent_quality.constrain_modes("both", True) == ["on", "off"]
    assert agent_quality.constrain_modes("off", True) == ["off"]
    assert agent_quality.constrain_modes("on", False) == [None]
    with pytest.raises(SystemExit, match="no --constrain option"):
        agent_quality.constrain_modes("both", False)


@pytest.mark.integration
def test_the_script_runs_bfcl_through_the_real_server_and_scores_with_bfcl(tmp_path):
    """Two simple_python and two irrelevance questions through ``chatforge serve`` on the
    default model: every reply is recorded, scored as BFCL's checker scores it, and timed."""
    from chatforge.models.embedded import EmbeddedModelError, ensure_hf_dir

    try:
        ensure_hf_dir()
    except (EmbeddedModelError, TypeError) as err:
        pytest.skip(f"embedded default model not installed: {err}")
    out = tmp_path / "bfcl.json"
    args = ["--part", "bfcl", "--categories", "simple_python,irrelevance", "--limit", "2", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "agent_quality.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["bfcl_version"] == bfcl.BFCL_VERSION and record["limit"] == 2
    ((label, run),) = record["bfcl"].items()
    assert label in ("constrain on", "server default")
    samples = run["samples"]
    expected = ["simple_python_0", "simple_python_1", "irrelevance_0", "irrelevance_1"]
    assert [s["id"] for s in samples] == expected
    by_id = {s.id: s for c in ("simple_python", "irrelevance") for s in bfcl.load_samples(c, 2)}
    for s in samples:
        assert s["completion_tokens"] > 0 and s["seconds"] > 0 and s["probe_seconds"] > 0
        output = s["calls"] or (s["content"] or "")
        rescored = bfcl.score(by_id[s["id"]], output)
        assert (rescored.passed, rescored.error) == (s["passed"], s["error"]), s
        if s["category"] == "simple_python" and s["calls"]:
            # The real reply with one argument changed to a value no answer accepts.
            ((name, arguments),) = s["calls"][0].items()
            args = json.loads(arguments)
            key = next(iter(args))
            args[key] = "wrong-value-7d1f"
            assert not bfcl.score(by_id[s["id"]], [{name: json.dumps(args)}]).passed
    summary = run["summary"]
    for category in ("simple_python", "irrelevance"):
        passed = sum(s["passed"] for s in samples if s["category"] == category)
        assert summary[category]["passed"] == passed and summary[category]["total"] == 2
        assert re.search(rf"\| {category} \| {passed}/2 \| ", done.stdout)
    assert f"every sample: {out}" in done.stdout


def test_the_suite_part_says_so_when_agent_suite_is_missing(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "agent_suite", raising=False)  # put back as it was afterwards
    assert agent_quality.load_suite(tmp_path) is None
    with pytest.raises(SystemExit, match="agent_suite.py is not there yet"):
        agent_quality.run_suite_part(agent_quality.parse_args(["--part", "suite"]), tmp_path)
    result, (section,) = agent_quality.run_suite_part(agent_quality.parse_args(["--part", "all"]), tmp_path)
    assert result is None and "is not there yet" in section
    (tmp_path / "agent_suite.py").write_text("def run_suite(model, tasks=None):\n    return {'tasks': []}\n")
    assert agent_quality.load_suite(tmp_path).run_suite(None) == {"tasks": []}
