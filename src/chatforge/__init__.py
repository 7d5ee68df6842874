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

__all__ = [
    "ChatModel",
    "ChatSession",
    "GenerationStats",
    "KVState",
    "Message",
    "ReplyEvent",
    "Role",
    "SamplingParams",
    "ToolCall",
    "load_model",
]
