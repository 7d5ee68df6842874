"""The files of a code-interpreter session: upload, read and list its working directory.

`SessionFiles` is mixed into `chatforge.agent.interpreter.session.InterpreterSession`. Names are
relative paths checked to stay inside the working directory; uploads are capped at
``InterpreterConfig.max_upload_bytes``.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

from chatforge.agent.interpreter.config import InterpreterConfig
from chatforge.agent.interpreter.outputs import FileInfo


class SessionFiles:
    """File access to a session's working directory (``workdir``), for `InterpreterSession`."""

    session_id: str
    workdir: Path
    config: InterpreterConfig
    last_used: float

    def _resolve(self, name: str) -> Path:
        if not name or "\x00" in name:
            raise ValueError("file name must be a non-empty relative path")
        relative = PurePosixPath(name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(
                f"file name {name!r} must be a relative path inside the session directory (no '..')"
            )
        root = self.workdir.resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"file name {name!r} points outside the session directory")
        return target

    def upload(self, name: str, data: bytes | str) -> Path:
        """Store ``data`` as ``name`` (a relative path) in the working directory and return its path."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(payload) > self.config.max_upload_bytes:
            raise ValueError(
                f"file {name!r} is {len(payload)} bytes; the limit is {self.config.max_upload_bytes} "
                "(InterpreterConfig.max_upload_bytes)"
            )
        target = self._resolve(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
        self.last_used = time.monotonic()
        return target

    def read_file(self, name: str) -> bytes:
        """Bytes of a file in the working directory (e.g. one the code wrote)."""
        target = self._resolve(name)
        if not target.is_file():
            raise FileNotFoundError(f"no file {name!r} in session {self.session_id!r}")
        return target.read_bytes()

    def files(self) -> list[FileInfo]:
        """Files in the working directory (recursively, hidden ones and caches skipped), sorted by name."""
        root = self.workdir
        found: list[FileInfo] = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            if path.is_file() and not path.is_symlink():
                found.append(FileInfo(relative.as_posix(), path.stat().st_size))
        return found

    def describe_files(self) -> str:
        """A one-line-per-file listing to tell the model what it can open."""
        listing = self.files()
        if not listing:
            return "The working directory is empty."
        return "Files in the working directory:\n" + "\n".join(
            f"- {f.name} ({_human_size(f.size)})" for f in listing
        )


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
