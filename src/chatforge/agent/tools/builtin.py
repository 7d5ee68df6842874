"""Built-in tools that are safe to give any model: the time, arithmetic, unit conversion.

This module owns three small tools and the helpers behind them. None of them runs a
shell command, touches the network or evaluates code: the calculator walks a parsed
`ast` tree and accepts only numbers, arithmetic operators and a whitelist of math
functions and constants, with bounds on expression length and result size.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chatforge.agent.tools.definition import Tool, tool

__all__ = [
    "CalculatorError",
    "UnitConversionError",
    "builtin_tools",
    "calculator",
    "convert",
    "convert_units",
    "current_time",
    "evaluate_arithmetic",
]

# ----------------------------------------------------------------------------- time


@tool(name="current_time")
def current_time(
    timezone: Annotated[
        str | None,
        "IANA time zone such as 'Europe/Paris', only for a place the user names; "
        "leave it out for the user's own local time",
        False,
    ] = None,
) -> dict[str, object]:
    """Get the current date and time, optionally in a given time zone."""
    if timezone:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {timezone!r}; use an IANA name such as 'Asia/Shanghai' or 'America/New_York'"
            ) from exc
        now = datetime.now(zone)
    else:
        now = datetime.now().astimezone()
    return {
        "datetime": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "weekday": now.strftime("%A"),
        "timezone": timezone or (now.tzname() or "local"),
        "utc_offset": now.strftime("%z"),
    }


# ----------------------------------------------------------------------------- calculator


class CalculatorError(ValueError):
    """An expression the calculator does not accept, or a result it will not produce."""


MAX_EXPRESSION_CHARS = 1000
MAX_EXPONENT = 10_000
MAX_RESULT_DIGITS = 1000
MAX_FACTORIAL = 1000

_BINARY_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _factorial(n: float) -> int:
    if not float(n).is_integer() or n < 0:
        raise CalculatorError("factorial() needs a non-negative whole number")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial() is limited to n <= {MAX_FACTORIAL}")
    return math.factorial(int(n))


def _log(x: float, base: float | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "cbrt": math.cbrt,
    "exp": math.exp,
    "log": _log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
    "min": min,
    "max": max,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _check_size(value: float) -> float:
    if isinstance(value, complex):
        raise CalculatorError("the result is a complex number (e.g. a fractional power of a negative number)")
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_RESULT_DIGITS * 3.33:
            raise CalculatorError(f"result has more than {MAX_RESULT_DIGITS} digits")
    elif isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number (too large, or undefined)")
    return value


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        # Estimate the digits before computing, so 9**9999 is refused instantly instead of built.
        if exponent * math.log10(abs(base)) > MAX_RESULT_DIGITS:
            raise CalculatorError(f"result would have more than {MAX_RESULT_DIGITS} digits")
    return base**exponent


class _Evaluator:
    """Evaluates a parsed arithmetic expression node by node; anything unlisted is refused."""

    def evaluate(self, node: ast.AST) -> float:
        match node:
            case ast.Expression(body=body):
                return self.evaluate(body)
            case ast.Constant(value=value) if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            case ast.Constant(value=value):
                raise CalculatorError(f"only numbers are allowed, not {value!r}")
            case ast.BinOp(left=left, op=op, right=right):
                if isinstance(op, ast.BitXor):
                    raise CalculatorError("'^' is not a power operator here; write 2**10 for powers")
                function = _BINARY_OPERATORS.get(type(op))
                if function is None:
                    raise CalculatorError(f"operator {type(op).__name__} is not allowed; use + - * / // % **")
                a, b = self.evaluate(left), self.evaluate(right)
                if isinstance(op, ast.Pow):
                    return _check_size(_power(a, b))
                return _check_size(function(a, b))
            case ast.UnaryOp(op=op, operand=operand):
                function = _UNARY_OPERATORS.get(type(op))
                if function is None:
                    raise CalculatorError(f"operator {type(op).__name__} is not allowed")
                return function(self.evaluate(operand))
            case ast.Name(id=name):
                if name in _CONSTANTS:
                    return _CONSTANTS[name]
                raise CalculatorError(f"unknown name {name!r}; constants: {', '.join(_CONSTANTS)}")
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]):
                function = _FUNCTIONS.get(name)
                if function is None:
                    raise CalculatorError(f"unknown function {name!r}; available: {', '.join(_FUNCTIONS)}")
                values = [self.evaluate(arg) for arg in args]
                try:
                    return _check_size(function(*values))
                except TypeError as exc:
                    raise CalculatorError(f"{name}(): wrong number of arguments ({exc})") from exc
            case ast.Call():
                raise CalculatorError("only plain function calls like sqrt(2) are allowed")
        raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def evaluate_arithmetic(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (parsed with `ast`, never `eval`).

    Raises `CalculatorError` with a message that says what is not allowed.
    """
    text = expression.strip()
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        hint = "; '%' is the remainder operator, so write 15% as 15/100" if "%" in text else ""
        raise CalculatorError(f"not a valid arithmetic expression: {exc.msg}{hint}") from exc
    try:
        result = _Evaluator().evaluate(tree)
    except ZeroDivisionError as exc:
        raise CalculatorError("division by zero") from exc
    except OverflowError as exc:
        raise CalculatorError("the result is too large") from exc
    except RecursionError as exc:
        raise CalculatorError("the expression is nested too deeply") from exc
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"math error: {exc}") from exc
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        return int(result)
    return result


@tool(name="calculator")
def calculator(
    expression: Annotated[
        str,
        "Arithmetic expression with numbers, + - * / // % ** and parentheses; functions such as "
        "sqrt, sin, cos, tan, log, exp, abs, round, factorial; constants pi, e, tau",
        True,
    ],
) -> int | float:
    """Evaluate an arithmetic expression exactly and return the number."""
    return evaluate_arithmetic(expression)


# ----------------------------------------------------------------------------- units


class UnitConversionError(ValueError):
    """Unknown unit, or units of different quantities."""


@dataclass(frozen=True)
class _Unit:
    quantity: str
    to_base: Callable[[float], float]
    from_base: Callable[[float], float]


def _linear(quantity: str, factor: float) -> _Unit:
    return _Unit(quantity, lambda v: v * factor, lambda v: v / factor)


_UNIT_TABLE: dict[str, tuple[_Unit, tuple[str, ...]]] = {
    # length, base metre
    "m": (_linear("length", 1.0), ("meter", "meters", "metre", "metres")),
    "km": (_linear("length", 1000.0), ("kilometer", "kilometers", "kilometre", "kilometres")),
    "cm": (_linear("length", 0.01), ("centimeter", "centimeters", "centimetre", "centimetres")),
    "mm": (_linear("length", 0.001), ("millimeter", "millimeters", "millimetre", "millimetres")),
    "um": (_linear("length", 1e-6), ("µm", "micrometer", "micrometers", "micron", "microns")),
    "nm": (_linear("length", 1e-9), ("nanometer", "nanometers")),
    "in": (_linear("length", 0.0254), ("inch", "inches", '"')),
    "ft": (_linear("length", 0.3048), ("foot", "feet", "'")),
    "yd": (_linear("length", 0.9144), ("yard", "yards")),
    "mi": (_linear("length", 1609.344), ("mile", "miles")),
    "nmi": (_linear("length", 1852.0), ("nautical mile", "nautical miles")),
    # mass, base kilogram
    "kg": (_linear("mass", 1.0), ("kilogram", "kilograms", "kilo", "kilos")),
    "g": (_linear("mass", 1e-3), ("gram", "grams")),
    "mg": (_linear("mass", 1e-6), ("milligram", "milligrams")),
    "t": (_linear("mass", 1000.0), ("tonne", "tonnes", "metric ton", "metric tons")),
    "lb": (_linear("mass", 0.45359237), ("lbs", "pound", "pounds")),
    "oz": (_linear("mass", 0.028349523125), ("ounce", "ounces")),
    "st": (_linear("mass", 6.35029318), ("stone", "stones")),
    "jin": (_linear("mass", 0.5), ("斤",)),
    # temperature, base kelvin
    "c": (_Unit("temperature", lambda v: v + 273.15, lambda v: v - 273.15), ("°c", "celsius", "degc")),
    "f": (
        _Unit("temperature", lambda v: (v - 32) * 5 / 9 + 273.15, lambda v: (v - 273.15) * 9 / 5 + 32),
        ("°f", "fahrenheit", "degf"),
    ),
    "k": (_linear("temperature", 1.0), ("kelvin", "kelvins")),
    # volume, base litre
    "l": (_linear("volume", 1.0), ("liter", "liters", "litre", "litres")),
    "ml": (_linear("volume", 1e-3), ("milliliter", "milliliters", "millilitre", "millilitres")),
    "m3": (_linear("volume", 1000.0), ("m^3", "cubic meter", "cubic meters", "cubic metre", "cubic metres")),
    "gal": (_linear("volume", 3.785411784), ("gallon", "gallons", "us gallon")),
    "qt": (_linear("volume", 0.946352946), ("quart", "quarts")),
    "pt": (_linear("volume", 0.473176473), ("pint", "pints")),
    "cup": (_linear("volume", 0.2365882365), ("cups",)),
    "floz": (_linear("volume", 0.0295735295625), ("fl oz", "fluid ounce", "fluid ounces")),
    # time, base second
    "s": (_linear("time", 1.0), ("sec", "second", "seconds")),
    "ms": (_linear("time", 1e-3), ("millisecond", "milliseconds")),
    "min": (_linear("time", 60.0), ("minute", "minutes")),
    "h": (_linear("time", 3600.0), ("hr", "hour", "hours")),
    "day": (_linear("time", 86400.0), ("d", "days")),
    "week": (_linear("time", 604800.0), ("wk", "weeks")),
}
_UNITS: dict[str, tuple[str, _Unit]] = {}
for _symbol, (_unit, _aliases) in _UNIT_TABLE.items():
    for _name in (_symbol, *_aliases):
        _UNITS[_name] = (_symbol, _unit)


def _lookup_unit(name: str) -> tuple[str, _Unit]:
    key = " ".join(name.strip().lower().split())
    if key in _UNITS:
        return _UNITS[key]
    by_quantity: dict[str, list[str]] = {}
    for symbol, (unit, _) in _UNIT_TABLE.items():
        by_quantity.setdefault(unit.quantity, []).append(symbol)
    known = "; ".join(f"{q}: {', '.join(symbols)}" for q, symbols in by_quantity.items())
    raise UnitConversionError(f"unknown unit {name!r}; supported units are {known}")


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """Convert ``value`` between two units of the same quantity (length, mass, temperature, volume, time)."""
    source_symbol, source = _lookup_unit(from_unit)
    target_symbol, target = _lookup_unit(to_unit)
    if source.quantity != target.quantity:
        raise UnitConversionError(
            f"cannot convert {source.quantity} ({source_symbol}) to {target.quantity} ({target_symbol})"
        )
    result = target.from_base(source.to_base(value))
    # 12 significant digits hide binary noise such as 0.30000000000000004.
    return float(f"{result:.12g}")


@tool(name="convert_units")
def convert_units(
    value: Annotated[float, "The amount to convert", True],
    from_unit: Annotated[str, "Unit of the amount, e.g. km, mi, kg, lb, C, F, K, l, gal, h", True],
    to_unit: Annotated[str, "Unit to convert to (same kind of quantity)", True],
) -> dict[str, object]:
    """Convert a value between units of length, mass, temperature, volume or time."""
    return {
        "value": value,
        "from_unit": from_unit,
        "to_unit": to_unit,
        "result": convert(value, from_unit, to_unit),
    }


def builtin_tools() -> list[Tool]:
    """The built-in tools, for a `ToolRegistry` or a prompt."""
    return [current_time, calculator, convert_units]
