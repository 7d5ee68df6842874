"""What the terminal shows of logs: every command's logging set up in one place.

Commands log as they always have (``chatforge``'s INFO lines and up; ``-v``: DEBUG and
llama.cpp's own lines), except those that ask for a quiet terminal (``chatforge chat``,
whose prompt and replies are the whole screen). Without ``-v`` they show only chatforge's
warnings and errors, one ``chatforge: warning: ...`` line each, and hide the rest: other
libraries' log records and Python warnings, transformers' and huggingface_hub's progress
bars, and llama.cpp's native log (its errors still reach the user inside the error that
reports the failure, see :func:`chatforge.llama_lib.take_native_errors`).
"""

from __future__ import annotations

import logging
import sys

from chatforge import llama_lib

FORMAT = "%(levelname)s %(name)s: %(message)s"


class _OneLine(logging.Formatter):
    """``chatforge: warning: message``, a traceback left for ``-v``."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        return f"chatforge: {record.levelname.lower()}: {message}"


def configure(verbose: bool, quiet: bool = False) -> None:
    """Set up logging for a command: ``verbose`` shows everything, ``quiet`` keeps the
    terminal to chatforge's warnings and errors."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format=FORMAT)
        llama_lib.set_native_logs("all")
        return
    if not quiet:
        logging.basicConfig(level=logging.INFO, format=FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logging.basicConfig(level=logging.ERROR, handlers=[handler])
    logging.getLogger("chatforge").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # to the py.warnings logger, below the root's ERROR
    llama_lib.set_native_logs("none")
    quiet_hugging_face()


def quiet_hugging_face() -> None:
    """transformers and huggingface_hub log through handlers of their own and draw progress
    bars (``Loading weights``) on stderr: both turned off. (chatforge loads every model through
    transformers' tokenizers, so importing it here costs nothing extra.)"""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        hf_logging = None
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        return
    disable_progress_bars()
