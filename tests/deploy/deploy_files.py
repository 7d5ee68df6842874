"""Reading the deployment files the way their tools do: the Dockerfile's instructions, the
build context left by .dockerignore, a compose file's variable interpolation, the Kubernetes
manifests' documents. No network, no container engine."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCS = ROOT / "docs" / "deployment.md"


# -- Dockerfile ----------------------------------------------------------------------------
@dataclass
class Instruction:
    stage: str  # the stage's name (AS ...) or its index
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the logical line, continuations joined


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions, with backslash continuations joined and comments dropped."""
    out: list[Instruction] = []
    stage, index, pending = "", -1, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            index += 1
            parts = value.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(index)
        out.append(Instruction(stage, keyword, value.strip()))
    return out


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form, e.g. CMD ["serve", ...]."""
    import json

    return json.loads(value)


def env_of(instructions: list[Instruction], stage: str) -> dict[str, str]:
    """The ENV values a stage sets (KEY=VALUE pairs, as shlex splits them)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.stage == stage and ins.keyword == "ENV":
            for pair in shlex.split(ins.value):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


# -- build context (.dockerignore) ----------------------------------------------------------
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated relative paths (Go's
    filepath.Match, plus ** for any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(root: Path = ROOT) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    path = root / ".dockerignore"
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip().strip("/")
        rules.append((negate, _glob_regex(pattern)))
    return rules


def in_context(rel: str, root: Path = ROOT) -> bool:
    """Whether the file ``rel`` (relative to the context) is sent to the build: the last rule
    that matches it or one of its parent directories decides."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in dockerignore_rules(root):
        if any(regex.match(c) for c in candidates):
            included = negate
    return included


# -- compose -------------------------------------------------------------------------------
class InterpolationError(ValueError):
    pass


_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}; an unset required variable raises, as `docker compose config` does."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("invalid") is not None:
            raise InterpolationError(
                f"invalid interpolation format at {m.string[m.start() : m.start() + 10]!r}"
            )
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        expr = m.group("braced")
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", expr)
        if not name:
            raise InterpolationError(f"invalid interpolation format: ${{{expr}}}")
        var, rest = name.group(0), expr[name.end() :]
        current = env.get(var)
        for op in (":?", "?", ":-", "-", ":+", "+"):
            if rest.startswith(op):
                arg = rest[len(op) :]
                unset = current is None or (op.startswith(":") and current == "")
                if op.endswith("?"):
                    if unset:
                        raise InterpolationError(f"required variable {var} is missing a value: {arg}")
                    return current or ""
                if op.endswith("-"):
                    return arg if unset else (current or "")
                return "" if unset else arg
        if rest:
            raise InterpolationError(f"invalid interpolation format: ${{{expr}}}")
        return current or ""

    return _VAR.sub(sub, value)


def interpolate_tree(node: object, env: dict[str, str]) -> object:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# -- Kubernetes ----------------------------------------------------------------------------
def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def k8s_objects(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


def pod_spec(deployment: str) -> dict:
    return k8s_objects("Deployment")[deployment]["spec"]["template"]["spec"]


def container(deployment: str, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    (found,) = [c for c in pod_spec(deployment).get(key, []) if c["name"] == name]
    return found


def env_map(c: dict) -> dict[str, dict]:
    """A container's env entries by name (the entry itself: value or valueFrom)."""
    return {e["name"]: e for e in c.get("env", [])}


def expand_k8s_args(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in args ($$ escapes)."""

    def sub(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in args]
