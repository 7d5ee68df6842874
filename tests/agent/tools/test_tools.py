"""Tests for chatforge.agent.tools: schemas, validation, execution limits, registry."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
from typing import Annotated, Literal, Optional

import pydantic
import pytest

from chatforge.agent import (
    Tool,
    ToolArgumentError,
    ToolDefinitionError,
    ToolNotExecutableError,
    ToolRegistry,
    ToolResult,
    register_tool,
    tool,
)
from chatforge.agent.tools.results import truncate_text

# ----------------------------------------------------------------------------- fixtures (module level,
# because type hints must resolve)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Point(pydantic.BaseModel):
    """A point on the map."""

    x: int
    y: int = 0


@dataclasses.dataclass
class Box:
    width: float
    height: float = 1.0


@dataclasses.dataclass
class TreeNode:
    name: str
    children: list[TreeNode] = dataclasses.field(default_factory=list)


def parameters_of(t: Tool) -> dict:
    return t.schema["function"]["parameters"]


# ----------------------------------------------------------------------------- schemas


def test_chatglm3_annotated_form_gives_exact_schema():
    @tool
    def get_weather(
        city_name: Annotated[str, "The name of the city to be queried", True],
    ) -> str:
        """
        Get the weather for `city_name` in the following week
        """
        return f"sunny in {city_name}"

    assert get_weather.schema == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for `city_name` in the following week",
            "parameters": {
                "type": "object",
                "properties": {
                    "city_name": {"type": "string", "description": "The name of the city to be queried"},
                },
                "required": ["city_name"],
            },
        },
    }
    # Still callable like the function.
    assert get_weather("Paris") == "sunny in Paris"
    assert get_weather.__name__ == "get_weather"


def test_chatglm3_not_required_flag_makes_parameter_optional():
    @tool
    def search(
        query: Annotated[str, "What to look for", True],
        limit: Annotated[int, "How many results", False],
    ) -> list:
        """Search."""
        return [query, limit]

    params = parameters_of(search)
    assert params["required"] == ["query"]
    assert params["properties"]["limit"] == {
        "type": "integer",
        "description": "How many results",
        "default": None,
    }
    assert search.invoke({"query": "x"}).content == '["x", null]'


def test_docstring_form_gives_exact_schema():
    @tool(name="forecast", timeout=5)
    def weather_forecast(city: str, days: int = 3, metric: bool = True) -> dict:
        """Forecast the weather.

        Uses the local model
        of the sky.

        Args:
            city: Name of the city,
                in English.
            days (int): Number of days to forecast.
            metric: Celsius if true.

        Returns:
            A forecast per day.
        """
        return {}

    assert weather_forecast.schema == {
        "type": "function",
        "function": {
            "name": "forecast",
            "description": "Forecast the weather.\n\nUses the local model of the sky.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "Name of the city, in English."},
                    "days": {"type": "integer", "description": "Number of days to forecast.", "default": 3},
                    "metric": {"type": "boolean", "description": "Celsius if true.", "default": True},
                },
                "required": ["city"],
            },
        },
    }
    assert weather_forecast.timeout == 5


def test_description_override_and_no_parameters():
    @tool(description="Say hello.")
    def hello() -> str:
        return "hello"

    assert hello.function_schema == {
        "name": "hello",
        "description": "Say hello.",
        "parameters": {"type": "object", "properties": {}},
    }


def test_literal_enum_optional_and_list_schemas():
    @tool
    def paint(
        unit: Literal["c", "f"],
        color: Color = Color.RED,
        tags: list[str] | None = None,
        count: Optional[int] = None,  # noqa: UP045 - the Optional spelling is what is tested
        shade: Color | None = None,
        extra: dict | None = None,
        weights: dict[str, float] | None = None,
    ) -> None:
        """Paint."""

    props = parameters_of(paint)["properties"]
    assert props["unit"] == {"type": "string", "enum": ["c", "f"]}
    assert props["color"] == {"type": "string", "enum": ["red", "green"], "default": "red"}
    assert props["tags"] == {"type": ["array", "null"], "items": {"type": "string"}, "default": None}
    assert props["count"] == {"type": ["integer", "null"], "default": None}
    assert props["shade"] == {"type": ["string", "null"], "enum": ["red", "green", None], "default": None}
    assert props["extra"] == {"type": ["object", "null"], "default": None}
    assert props["weights"] == {
        "type": ["object", "null"],
        "additionalProperties": {"type": "number"},
        "default": None,
    }
    assert parameters_of(paint)["required"] == ["unit"]


def test_nested_pydantic_model_and_dataclass_are_inlined():
    @tool
    def place(point: Annotated[Point, "Where", True], boxes: list[Box]) -> dict:
        """Place boxes."""
        return {"point": point, "boxes": boxes}

    params = parameters_of(place)
    assert "$defs" not in params
    assert params["properties"]["point"] == {
        "type": "object",
        "description": "Where",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer", "default": 0}},
        "required": ["x"],
    }
    assert params["properties"]["boxes"] == {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"width": {"type": "number"}, "height": {"type": "number", "default": 1.0}},
            "required": ["width"],
        },
    }
    # The function receives real objects, and the result is JSON.
    result = place.invoke({"point": {"x": "3"}, "boxes": [{"width": 2}]})
    assert not result.is_error
    assert json.loads(result.content) == {
        "point": {"x": 3, "y": 0},
        "boxes": [{"width": 2.0, "height": 1.0}],
    }


def test_recursive_type_keeps_defs():
    @tool
    def walk(tree: TreeNode) -> int:
        """Count nodes."""
        return 1 + sum(walk(c) for c in tree.children)

    params = parameters_of(walk)
    assert params["properties"]["tree"] == {"$ref": "#/$defs/TreeNode"}
    assert params["$defs"]["TreeNode"]["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/$defs/TreeNode"},
    }
    assert walk.invoke({"tree": {"name": "a", "children": [{"name": "b"}]}}).content == "2"


def test_property_named_title_survives_cleaning():
    @tool
    def note(title: str, body: str = "") -> str:
        """Write a note."""
        return title

    assert set(parameters_of(note)["properties"]) == {"title", "body"}


def _unannotated(x):
    return x


def _var_positional(*args: int) -> None:
    pass


def _var_keyword(**kwargs: int) -> None:
    pass


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        (_unannotated, "parameter 'x' has no type annotation"),
        (_var_positional, "cannot be described"),
        (_var_keyword, "cannot be described"),
    ],
)
def test_bad_definitions_are_explained(function, fragment):
    with pytest.raises(ToolDefinitionError, match=fragment):
        tool(function)


def test_invalid_tool_name_is_rejected():
    with pytest.raises(ToolDefinitionError, match="invalid"):
        tool(name="has space")(lambda: None)


# ----------------------------------------------------------------------------- validation


@tool
def get_weather(
    city_name: Annotated[str, "The name of the city", True],
    days: Annotated[int, "Days to forecast", False] = 1,
    unit: Literal["c", "f"] = "c",
    point: Point | None = None,
) -> dict:
    """Weather for a city."""
    return {"city": city_name, "days": days, "unit": unit}


def test_validation_names_tool_and_missing_field():
    with pytest.raises(ToolArgumentError) as info:
        get_weather.validate({})
    assert str(info.value) == "get_weather: argument 'city_name' is required"
    assert info.value.tool_name == "get_weather"


def test_validation_explains_wrong_types():
    with pytest.raises(ToolArgumentError) as info:
        get_weather.validate({"city_name": "Paris", "days": "three"})
    assert "get_weather: 'days' must be an integer, got 'three'" in str(info.value)


def test_validation_reports_every_problem_with_nested_paths():
    with pytest.raises(ToolArgumentError) as info:
        get_weather.validate({"unit": "k", "point": {"y": 1}, "colour": "red"})
    message = str(info.value)
    assert "unexpected argument 'colour' (accepted: city_name, days, unit, point)" in message
    assert "argument 'city_name' is required" in message
    assert "'unit' must be one of 'c' or 'f', got 'k'" in message
    assert "argument 'point.x' is required" in message


def test_validation_accepts_json_text_and_coerces_lax_values():
    assert get_weather.validate('{"city_name": "Paris", "days": "2"}') == {
        "city_name": "Paris",
        "days": 2,
        "unit": "c",
        "point": None,
    }
    assert get_weather.validate('{"city_name": "Oslo", "point": {"x": 1}}')["point"] == Point(x=1)


def test_validation_rejects_bad_json_and_non_objects():
    with pytest.raises(ToolArgumentError, match="get_weather: arguments are not valid JSON"):
        get_weather.validate('{"city_name": ')
    with pytest.raises(ToolArgumentError, match="arguments must be a JSON object, got list"):
        get_weather.validate("[1, 2]")


def test_empty_arguments_mean_none():
    @tool
    def ping() -> str:
        """Ping."""
        return "pong"

    assert ping.validate("") == {}
    assert ping.validate(None) == {}
    assert ping.invoke("  ").content == "pong"


# ----------------------------------------------------------------------------- execution


def test_invoke_returns_json_for_structured_results():
    result = get_weather.invoke({"city_name": "北京"})
    assert isinstance(result, ToolResult)
    assert result == ToolResult("get_weather", result.content, False, False, result.elapsed)
    assert result.content == '{"city": "北京", "days": 1, "unit": "c"}'  # ensure_ascii=False
    assert result.elapsed >= 0


def test_invoke_turns_validation_errors_into_error_results():
    result = get_weather.invoke({"days": 2})
    assert result.is_error
    assert result.content == "get_weather: argument 'city_name' is required"


def test_invoke_reports_exceptions_briefly():
    @tool
    def explode(x: int) -> int:
        """Fail."""
        raise ValueError(f"bad value {x}")

    result = explode.invoke({"x": 3})
    assert result.is_error
    assert result.content == "explode: ValueError: bad value 3"
    assert "Traceback" not in result.content


def test_invoke_times_out_sync_tool():
    @tool(timeout=0.5)
    def slow() -> str:
        """Sleep."""
        time.sleep(3)
        return "done"

    started = time.perf_counter()
    result = slow.invoke({})
    assert time.perf_counter() - started < 2
    assert result.is_error
    assert result.content == "slow: timed out after 0.5 s"


def test_tool_own_timeout_error_is_not_reported_as_ours():
    @tool(timeout=5)
    async def fetch() -> str:
        """Fetch."""
        raise TimeoutError("upstream did not answer")

    result = fetch.invoke({})
    assert result.content == "fetch: TimeoutError: upstream did not answer"


def test_unserialisable_result_falls_back_to_str():
    class Opaque:
        def __str__(self) -> str:
            return "<opaque thing>"

    @tool
    def make() -> object:
        """Make."""
        return Opaque()

    @tool
    def make_many() -> dict:
        """Make several."""
        return {"thing": Opaque(), "n": 1}

    assert make.invoke().content == "<opaque thing>"
    assert json.loads(make_many.invoke().content) == {"thing": "<opaque thing>", "n": 1}


def test_dataclass_and_string_results():
    @tool
    def box() -> Box:
        """A box."""
        return Box(width=2)

    @tool
    def text() -> str:
        """Text."""
        return "plain text, not JSON"

    assert json.loads(box.invoke().content) == {"width": 2, "height": 1.0}
    assert text.invoke().content == "plain text, not JSON"


def test_huge_result_is_truncated_with_marker():
    @tool(max_result_chars=100)
    def flood() -> str:
        """Flood."""
        return "x" * 123_556

    result = flood.invoke()
    assert result.truncated and not result.is_error
    assert result.content == "x" * 100 + "…[truncated 123456 characters]"
    assert truncate_text("short", 10) == ("short", False)


def test_async_tool_sync_and_async_invocation():
    @tool(timeout=0.5)
    async def double(n: int) -> int:
        """Double a number."""
        await asyncio.sleep(0.01)
        return 2 * n

    @tool(timeout=0.5)
    async def hang() -> None:
        """Never finish."""
        await asyncio.sleep(10)

    assert double.is_async
    assert double.invoke({"n": 21}).content == "42"
    assert asyncio.run(double.ainvoke('{"n": 4}')).content == "8"
    assert asyncio.run(double(3)) == 6  # still the function

    started = time.perf_counter()
    result = asyncio.run(hang.ainvoke())
    assert result.is_error and result.content == "hang: timed out after 0.5 s"
    assert time.perf_counter() - started < 2
    assert hang.invoke().content == "hang: timed out after 0.5 s"


def test_ainvoke_runs_sync_tool_with_timeout():
    @tool(timeout=0.5)
    def slow(seconds: float) -> str:
        """Sleep."""
        time.sleep(seconds)
        return "woke"

    async def main() -> tuple[ToolResult, ToolResult]:
        return await slow.ainvoke({"seconds": 0.01}), await slow.ainvoke({"seconds": 3})

    ok, late = asyncio.run(main())
    assert ok.content == "woke"
    assert late.is_error and "timed out" in late.content


def test_no_timeout_runs_inline():
    @tool(timeout=None)
    def inline() -> str:
        """Inline."""
        return "ok"

    assert inline.invoke().content == "ok"


# ----------------------------------------------------------------------------- from_schema

WEATHER_SCHEMA = {
    "type": "function",
    "function": {
        "name": "lookup_weather",
        "description": "Look up the weather.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City"},
                "days": {"type": "integer", "minimum": 1},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_from_schema_declares_caller_executed_tool():
    declared = Tool.from_schema(WEATHER_SCHEMA)
    assert not declared.executable
    assert declared.schema == WEATHER_SCHEMA
    assert declared.validate('{"city": "Rome", "days": 2}') == {"city": "Rome", "days": 2}
    with pytest.raises(ToolNotExecutableError, match="caller must execute it"):
        declared.invoke({"city": "Rome"})


def test_from_schema_validation_messages_name_fields():
    declared = Tool.from_schema(WEATHER_SCHEMA["function"])  # the inner form works too
    with pytest.raises(ToolArgumentError) as info:
        declared.validate({"days": "three", "unit": "k", "wind": 1})
    message = str(info.value)
    assert message.startswith("lookup_weather: ")
    assert "argument 'city' is required" in message
    assert "'days' must be of type integer, got 'three'" in message
    assert "'unit' must be one of 'c', 'f', got 'k'" in message
    assert "unexpected argument(s) 'wind'" in message
    with pytest.raises(ToolArgumentError, match="'days': 0 is less than the minimum of 1"):
        declared.validate({"city": "Rome", "days": 0})


def test_from_schema_with_function_and_bad_schema():
    executable = Tool.from_schema(WEATHER_SCHEMA, fn=lambda city, **_: f"rain in {city}")
    assert executable.invoke({"city": "Rome"}).content == "rain in Rome"
    with pytest.raises(ToolDefinitionError, match="not a valid JSON Schema"):
        Tool.from_schema({"name": "x", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}})
    with pytest.raises(ToolDefinitionError, match="needs a 'name'"):
        Tool.from_schema({"parameters": {}})


# ----------------------------------------------------------------------------- registry


def test_registry_dispatch_and_unknown_tool():
    registry = ToolRegistry([get_weather])

    @registry.tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    assert registry.names == ["get_weather", "add"]
    assert [s["function"]["name"] for s in registry.schemas()] == ["get_weather", "add"]
    assert registry.invoke("add", '{"a": 1, "b": 2}').content == "3"
    assert asyncio.run(registry.ainvoke("add", {"a": 2, "b": 2})).content == "4"

    unknown = registry.invoke("get_wether", {})
    assert unknown.is_error
    assert (
        unknown.content
        == "unknown tool 'get_wether'; did you mean 'get_weather'?; available: get_weather, add"
    )
    assert registry.invoke("zzz").content == "unknown tool 'zzz'; available: get_weather, add"
    with pytest.raises(KeyError, match="unknown tool 'zzz'"):
        registry["zzz"]


def test_registry_refuses_duplicates_unless_replaced():
    registry = ToolRegistry([get_weather])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(get_weather)
    registry.register(get_weather, replace=True)
    assert len(registry) == 1 and "get_weather" in registry
    registry.unregister("get_weather")
    assert len(registry) == 0


def test_register_tool_uses_default_registry(monkeypatch):
    from chatforge.agent.tools import registry as tools_module

    fresh = ToolRegistry()
    monkeypatch.setattr(tools_module, "default_registry", fresh)

    @register_tool
    def echo(text: Annotated[str, "Text to echo", True]) -> str:
        """Echo text."""
        return text

    assert fresh.names == ["echo"]
    assert isinstance(echo, Tool)
