"""deploy/docker-compose.yml checked as `docker compose config` would (interpolation, the
compose specification through compose-spec's parser, references that must resolve) and
against the image and the server."""

from __future__ import annotations

import re

import pytest
from deploy_files import (
    COMPOSE,
    ROOT,
    InterpolationError,
    compose_raw,
    dockerfile_instructions,
    env_of,
    exec_form,
    interpolate,
    interpolate_tree,
)

ENV = {"CHATFORGE_API_KEY": "k3y", "WEBUI_SECRET_KEY": "w3b"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate_tree(compose_raw(), ENV)


def test_interpolation_like_compose():
    assert interpolate("a$$b", {}) == "a$b"
    assert interpolate("${X:-d}/${Y-e}", {"Y": ""}) == "d/"
    assert interpolate("${X:?need X}", {"X": "1"}) == "1"
    with pytest.raises(InterpolationError, match="need X"):
        interpolate("${X:?need X}", {})
    with pytest.raises(InterpolationError):
        interpolate("$(date)", {})


@pytest.mark.parametrize("missing", sorted(ENV))
def test_the_secrets_are_required(missing):
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(InterpolationError, match=missing):
        interpolate_tree(compose_raw(), env)


def test_the_file_follows_the_compose_specification():
    import compose_spec  # the test extra installs it

    parsed = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())  # raises ValueError if not
    assert sorted(parsed.services) == ["chatforge", "open-webui"]
    assert sorted(parsed.volumes) == ["chatforge-data", "open-webui-data"]
    with pytest.raises(ValueError):  # and the parser does reject what is wrong
        compose_spec.PyCompose.from_yaml("services: {a: {image: x, restart: sometimes}}")


def test_references_resolve(compose):
    services, volumes = compose["services"], compose["volumes"]
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, (name, source)
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
        for key, value in (service.get("environment") or {}).items():
            assert isinstance(value, str) and value, (name, key)  # no null or empty values


def test_the_image_is_built_from_the_dockerfile_not_mounted_source(compose):
    service = compose["services"]["chatforge"]
    context = (COMPOSE.parent / service["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / service["build"]["dockerfile"]).resolve() == (ROOT / "deploy" / "Dockerfile")
    assert service["image"] == "chatforge:latest"
    # no source tree mounted: only the named volume for its home
    assert service["volumes"] == ["chatforge-data:/var/lib/chatforge"]
    assert "working_dir" not in service


def test_ports_are_on_loopback_and_distinct(compose):
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            m = re.fullmatch(r"127\.0\.0\.1:(\d+):(\d+)", port)
            assert m, (name, port)  # not on every interface of the host
            published.append(int(m.group(1)))
            assert 0 < int(m.group(2)) < 65536
    assert len(published) == len(set(published))


def test_chatforge_runs_hardened_as_the_images_user(compose):
    service = compose["services"]["chatforge"]
    (user,) = [i.value for i in dockerfile_instructions() if i.keyword == "USER"]
    assert service["user"] == user
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    image_env = env_of(dockerfile_instructions(), "runtime")
    env = service["environment"]
    tmpfs = [t.split(":")[0] for t in service["tmpfs"]]
    assert env["CHATFORGE_HOME"] == image_env["CHATFORGE_HOME"]
    assert env["HOME"] == image_env["HOME"] and env["HOME"] in tmpfs and "/tmp" in tmpfs
    assert service["volumes"][0].endswith(":" + env["CHATFORGE_HOME"])


def test_chatforge_fetches_the_model_then_serves_with_the_key(compose):
    from chatforge.cli.commands import build_parser
    from chatforge.env import API_KEY as API_KEY_ENV

    service = compose["services"]["chatforge"]
    shell, flag, script, arg0 = service["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert script == 'chatforge model fetch && exec chatforge "$@"'
    args = build_parser().parse_args(service["command"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert service["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
    assert f"127.0.0.1:{args.port}/health" in " ".join(service["healthcheck"]["test"])
    assert service["environment"][API_KEY_ENV] == ENV["CHATFORGE_API_KEY"]
    assert service["environment"]["HF_HUB_OFFLINE"] == "1"
    # the image's own CMD serves the same way
    (cmd,) = [i.value for i in dockerfile_instructions() if i.keyword == "CMD" and i.stage == "runtime"]
    assert exec_form(cmd) == service["command"]


def test_open_webui_is_in_front(compose):
    from chatforge.serve.embeddings import MODEL_ID

    chatforge = compose["services"]["chatforge"]
    webui = compose["services"]["open-webui"]
    port = build_port(chatforge)
    assert webui["environment"]["OPENAI_API_BASE_URL"] == f"http://chatforge:{port}/v1"
    assert webui["environment"]["RAG_OPENAI_API_BASE_URL"] == f"http://chatforge:{port}/v1"
    assert webui["environment"]["OPENAI_API_KEY"] == ENV["CHATFORGE_API_KEY"]
    assert webui["environment"]["RAG_EMBEDDING_MODEL"] == MODEL_ID
    assert webui["depends_on"] == {"chatforge": {"condition": "service_healthy"}}
    assert webui["volumes"] == ["open-webui-data:/app/backend/data"]


def build_port(service: dict) -> int:
    return int(service["command"][service["command"].index("--port") + 1])
