"""Tools the model can call; each job lives in its own module (the public names are
re-exported once, by :mod:`chatforge.agent`):

* `definition`: `tool` / `Tool`, a Python function becomes a tool whose JSON Schema
  (OpenAI function shape) is derived from its signature; `Tool.from_schema` declares a
  tool by a raw JSON Schema that the caller executes; `Tool.invoke` / `Tool.ainvoke` run
  it and turn every tool-side problem into a `ToolResult` the model can read.
* `schema`: signature, ``Annotated`` metadata and docstring → compact JSON Schema.
* `arguments`: `Tool.validate`, arguments (a dict or the model's JSON string) checked
  *before* the call, with errors that name the tool and the field (`ToolArgumentError`).
* `execution`: wall-clock timeouts for sync and async tools.
* `results`: `ToolResult`, rendering of return values, truncation of long text.
* `errors`: the exceptions.
* `registry`: `ToolRegistry`, tools by name, their schemas for the prompt, dispatch by
  name; the process-wide `default_registry` with `register_tool`; `load_tools` for
  ``--tools MODULE:ATTR``.
* `builtin`: the built-in tools (time, arithmetic, unit conversion).
"""
