"""The agent layer: tools the model can call, the sandboxed code interpreter (and, next, the agent loop).

Public names are re-exported here; see `tools` (with `tool_definition`, `tool_schema`,
`tool_arguments`, `tool_execution`, `tool_results`, `tool_errors` and `tool_registry`),
`builtin_tools`, `interpreter` (with `kernel_session`, `kernel_launch`, `session_files`, `outputs` and
`interpreter_config`),
`loop`, `sandbox` and `landlock` for what each module owns.
"""

from .builtin_tools import builtin_tools
from .interpreter import (
    CodeInterpreter,
    ErrorOutput,
    ExecutionResult,
    FileInfo,
    ImageOutput,
    InterpreterConfig,
    InterpreterError,
    InterpreterSession,
    KernelStartError,
    NoticeOutput,
    Output,
    StreamOutput,
    TextOutput,
)
from .landlock import LandlockReport
from .loop import Agent, AgentEvent, AgentResult, EventKind
from .sandbox import KernelLimits, SandboxReport
from .tools import (
    Tool,
    ToolArgumentError,
    ToolDefinitionError,
    ToolNotExecutableError,
    ToolRegistry,
    ToolResult,
    default_registry,
    register_tool,
    tool,
)

__all__ = [
    # the loop
    "Agent",
    "AgentEvent",
    "AgentResult",
    "EventKind",
    # tools
    "Tool",
    "ToolArgumentError",
    "ToolDefinitionError",
    "ToolNotExecutableError",
    "ToolRegistry",
    "ToolResult",
    "builtin_tools",
    "default_registry",
    "register_tool",
    "tool",
    # code interpreter
    "CodeInterpreter",
    "ErrorOutput",
    "ExecutionResult",
    "FileInfo",
    "ImageOutput",
    "InterpreterConfig",
    "InterpreterError",
    "InterpreterSession",
    "KernelLimits",
    "KernelStartError",
    "LandlockReport",
    "NoticeOutput",
    "Output",
    "SandboxReport",
    "StreamOutput",
    "TextOutput",
]
