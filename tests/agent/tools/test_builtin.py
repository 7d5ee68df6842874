"""Tests for chatforge.agent.tools.builtin: time, calculator, unit conversion."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest

from chatforge.agent import ToolRegistry
from chatforge.agent.tools.builtin import (
    CalculatorError,
    UnitConversionError,
    builtin_tools,
    calculator,
    convert,
    convert_units,
    current_time,
    evaluate_arithmetic,
)


def test_builtin_tools_are_registrable_and_described():
    registry = ToolRegistry(builtin_tools())
    assert registry.names == ["current_time", "calculator", "convert_units"]
    for schema in registry.schemas():
        assert schema["function"]["description"]
    assert builtin_tools() is not builtin_tools()  # a fresh list each time


def test_current_time_in_a_time_zone():
    result = current_time.invoke({"timezone": "Asia/Shanghai"})
    assert not result.is_error
    data = json.loads(result.content)
    assert data["utc_offset"] == "+0800"
    assert data["timezone"] == "Asia/Shanghai"
    assert datetime.fromisoformat(data["datetime"]).tzinfo is not None


def test_current_time_local_and_unknown_zone():
    assert "datetime" in json.loads(current_time.invoke({}).content)
    bad = current_time.invoke({"timezone": "Mars/Olympus_Mons"})
    assert bad.is_error
    assert "unknown time zone 'Mars/Olympus_Mons'" in bad.content


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("-2 ** 2", -4),
        ("7 // 2 + 7 % 2", 4),
        ("10 / 4", 2.5),
        ("2 ** 10", 1024),
        ("sqrt(16) + abs(-3)", 7),
        ("round(pi, 4)", 3.1416),
        ("log(e)", 1),
        ("log(8, 2)", 3),
        ("factorial(5)", 120),
        ("max(1, 5, 3)", 5),
        ("3 × 4 ÷ 2", 6),
    ],
)
def test_calculator_evaluates_arithmetic(expression, expected):
    result = evaluate_arithmetic(expression)
    assert math.isclose(result, expected)


def test_calculator_tool_returns_number():
    assert calculator.invoke({"expression": "2 * (3 + 4)"}).content == "14"
    assert calculator.invoke({"expression": "sin(pi / 2)"}).content == "1"


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os').system('echo hi')", "only plain function calls"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("x + 1", "unknown name 'x'"),
        ("(1).__class__", "Attribute is not allowed"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("2 ^ 8", "write 2**10 for powers"),
        ("1 < 2", "Compare is not allowed"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 5000", "more than 1000 digits"),
        ("2.0 ** 5000", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("factorial(100000)", "factorial() is limited"),
        ("(-8) ** 0.5", "complex number"),
        ("sqrt(-1)", "math error"),
        ("1 +", "not a valid arithmetic expression"),
        ("", "empty"),
        ("1+" * 600 + "1", "longer than 1000 characters"),
    ],
)
def test_calculator_rejects_unsafe_or_huge_input(expression, fragment):
    with pytest.raises(CalculatorError, match=None) as info:
        evaluate_arithmetic(expression)
    assert fragment in str(info.value)


def test_calculator_tool_reports_errors_as_results():
    result = calculator.invoke({"expression": "import os"})
    assert result.is_error
    assert result.content.startswith("calculator: CalculatorError: not a valid arithmetic expression")


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1, "km", "m", 1000),
        (1, "mile", "km", 1.609344),
        (12, "inches", "ft", 1),
        (1, "kg", "lb", 2.20462262185),
        (16, "oz", "lb", 1),
        (100, "C", "F", 212),
        (32, "°F", "celsius", 0),
        (0, "K", "C", -273.15),
        (1, "gal", "L", 3.785411784),
        (90, "min", "h", 1.5),
    ],
)
def test_unit_conversion(value, source, target, expected):
    assert math.isclose(convert(value, source, target), expected, rel_tol=1e-9)


def test_unit_conversion_errors():
    with pytest.raises(UnitConversionError, match="cannot convert length \\(km\\) to mass \\(kg\\)"):
        convert(1, "km", "kg")
    with pytest.raises(
        UnitConversionError, match="unknown unit 'furlong'; supported units are length: m, km"
    ):
        convert(1, "furlong", "m")


def test_convert_units_tool():
    result = convert_units.invoke('{"value": 5, "from_unit": "km", "to_unit": "mi"}')
    assert json.loads(result.content) == {
        "value": 5.0,
        "from_unit": "km",
        "to_unit": "mi",
        "result": 3.10685596119,
    }
    assert convert_units.invoke({"value": "five", "from_unit": "km", "to_unit": "mi"}).content == (
        "convert_units: 'value' must be a number, got 'five'"
    )
