"""chatforge: run, extend and fine-tune a local chat LLM on your own machine, offline.

>>> import chatforge
>>> model = chatforge.load_model("default")
>>> response, history = model.chat("你好", history=[])
"""

from chatforge.chat import ChatModel, ChatSession, ReplyEvent, load_model
from chatforge.engines.base import GenerationStats, KVState, SamplingParams
from chatforge.messages import Message, Role, ToolCall
from chatforge.notebook import load_ipython_extension, unload_ipython_extension  # noqa: F401  (%load_ext chatforge)

__version__ = "0.1.0"

_AGENT_NAMES = ("Agent", "tool", "ToolRegistry", "builtin_tools", "CodeInterpreter")


def __getattr__(name: str):
    # The agent layer pulls in jupyter_client; load it only when asked for.
    if name in _AGENT_NAMES:
        from chatforge import agent

        return getattr(agent, name)
    if name == "learn":  # torch, transformers and peft's training side: only when asked for
        from chatforge.train.learn import learn

        return learn
    raise AttributeError(f"module 'chatforge' has no attribute {name!r}")


__all__ = [
    "Agent",
    "CodeInterpreter",
    "ToolRegistry",
    "builtin_tools",
    "tool",
    "ChatModel",
    "ChatSession",
    "GenerationStats",
    "KVState",
    "Message",
    "ReplyEvent",
    "Role",
    "SamplingParams",
    "ToolCall",
    "learn",
    "load_model",
]
