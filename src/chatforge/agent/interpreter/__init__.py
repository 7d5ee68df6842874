"""The code interpreter: model-written Python run in sandboxed Jupyter kernels, one per session.

* `code_interpreter`: `CodeInterpreter`, the sessions under one root directory.
* `session`: `InterpreterSession`, one conversation's kernel (a real ``ipykernel`` started
  through ``jupyter_client``) and its working directory; `files` adds upload and listing.
* `launch`: starting and stopping a session's kernel process under the sandbox launcher.
* `sandbox`: the process limits applied inside a kernel before IPython starts.
* `landlock`: Landlock confinement (files, TCP, signals).
* `outputs`: `ExecutionResult` and its typed items, collected from iopub messages.
* `config`: `InterpreterConfig`, the settings.

Public names are re-exported here.
"""

from chatforge.agent.interpreter.code_interpreter import CodeInterpreter
from chatforge.agent.interpreter.config import DEFAULT_ENV_PASSTHROUGH, InterpreterConfig
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
    is_png,
    strip_ansi,
)
from chatforge.agent.interpreter.sandbox import KernelLimits, SandboxReport
from chatforge.agent.interpreter.session import InterpreterError, InterpreterSession, KernelStartError

__all__ = [
    "DEFAULT_ENV_PASSTHROUGH",
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
    "is_png",
    "strip_ansi",
]
