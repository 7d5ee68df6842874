"""The agent layer: tools the model can call (`tools/`), the sandboxed code interpreter
(`interpreter/`), and the loop that alternates generation and execution until the model
answers (`loop`). It knows nothing of HTTP or the UI.

Public names are re-exported here, each from the module that defines it.
"""

from chatforge.agent.interpreter.code_interpreter import CodeInterpreter
from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.interpreter.landlock import LandlockReport
from chatforge.agent.interpreter.outputs import (
    ErrorOutput,
    ExecutionResult,
    FileInfo,
    ImageOutput,
    NoticeOutput,
    Output,
    StreamOutput,
    TextOutput,
)
from chatforge.agent.interpreter.sandbox import KernelLimits, SandboxReport
from chatforge.agent.interpreter.session import InterpreterError, InterpreterSession, KernelStartError
from chatforge.agent.loop import Agent, AgentEvent, AgentResult, EventKind
from chatforge.agent.tools.builtin import builtin_tools
from chatforge.agent.tools.definition import Tool, tool
from chatforge.agent.tools.errors import ToolArgumentError, ToolDefinitionError, ToolNotExecutableError
from chatforge.agent.tools.registry import ToolRegistry, default_registry, register_tool
from chatforge.agent.tools.results import ToolResult

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
