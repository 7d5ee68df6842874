"""deploy/k8s/*.yaml: valid against Kubernetes' schemas (offline, kubernetes-validate ships
them), hardened, and consistent with what `chatforge serve` and the image do."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from deploy_files import (
    K8S,
    ROOT,
    container,
    dockerfile_instructions,
    env_map,
    env_of,
    expand_k8s_args,
    k8s_documents,
    k8s_objects,
    pod_spec,
)

# The oldest Kubernetes still common in clusters, and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
PORT = 8000  # what the manifests serve on; checked against the args below
DEPLOYMENTS = {"chatforge": ["chatforge"], "open-webui": ["open-webui"]}


def test_the_manifests_are_there():
    assert {p.name for p in K8S} == {"chatforge.yaml", "open-webui.yaml"}
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in k8s_documents())
    assert kinds == [
        ("Deployment", "chatforge"),
        ("Deployment", "open-webui"),
        ("PersistentVolumeClaim", "chatforge-data"),
        ("PersistentVolumeClaim", "open-webui-data"),
        ("Service", "chatforge"),
        ("Service", "open-webui"),
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_every_document_validates_against_the_kubernetes_schema(path, version):
    import yaml

    for doc in yaml.safe_load_all(path.read_text()):
        # strict: an unknown or misspelt field fails too
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    deployment = k8s_objects("Deployment")["chatforge"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def _image_user() -> int:
    (user,) = [i.value for i in dockerfile_instructions() if i.keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so that Kubernetes can check runAsNonRoot"
    return int(uid)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_pods_are_hardened(deployment):
    spec = pod_spec(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert "privileged" not in sc or sc["privileged"] is False
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], c["name"]
        # every volume a container mounts exists in the pod
        volumes = {v["name"] for v in spec["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= volumes


def test_chatforge_runs_as_the_images_user_with_its_writable_paths_as_volumes():
    spec = pod_spec("chatforge")
    assert spec["securityContext"]["runAsUser"] == _image_user()
    assert spec["securityContext"]["fsGroup"] == _image_user()  # the PVC is writable for it
    image_env = env_of(dockerfile_instructions(), "runtime")
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["initContainers"] + spec["containers"]:
        env = {k: e.get("value") for k, e in env_map(c).items()}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        # the image's CHATFORGE_HOME and HOME, restated, and each a volume: the root is read-only
        for var in ("CHATFORGE_HOME", "HOME"):
            assert env[var] == image_env[var], (c["name"], var)
            assert env[var] in mounts, (c["name"], var)
        assert "/tmp" in mounts
        assert "persistentVolumeClaim" in volumes[mounts[env["CHATFORGE_HOME"]]]
        assert volumes[mounts[env["CHATFORGE_HOME"]]]["persistentVolumeClaim"]["claimName"] in k8s_objects(
            "PersistentVolumeClaim"
        )
        assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts[env["HOME"]]]


def test_the_init_container_fetches_the_embedded_model_into_the_pvc():
    init = container("chatforge", "model-fetch", init=True)
    main = container("chatforge", "chatforge")
    assert init["image"] == main["image"]  # the model packages are in that image
    assert init["args"] == ["model", "fetch"]
    assert env_map(init)["CHATFORGE_HOME"] == env_map(main)["CHATFORGE_HOME"]
    assert env_map(init)["HF_HUB_OFFLINE"]["value"] == "1"
    assert env_map(main)["HF_HUB_OFFLINE"]["value"] == "1"
    # `chatforge model fetch` is a real command, and the model goes where CHATFORGE_HOME says
    from chatforge.cli.commands import build_parser

    args = build_parser().parse_args(init["args"])
    assert args.handler.__name__ == "run_model_fetch"


def test_cache_dir_follows_chatforge_home(monkeypatch, tmp_path):
    from chatforge.models import embedded

    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path))
    assert embedded.model_dir().is_relative_to(tmp_path)


def _serve_args() -> tuple[list[str], object]:
    from chatforge.cli.commands import build_parser

    main = container("chatforge", "chatforge")
    # Kubernetes expands $(VAR) from the container's env; CPU_LIMIT comes from limits.cpu
    env = {"CPU_LIMIT": str(main["resources"]["limits"]["cpu"])}
    for name, entry in env_map(main).items():
        if "value" in entry:
            env[name] = entry["value"]
    expanded = expand_k8s_args(main["args"], env)
    assert not [a for a in expanded if re.search(r"\$\(", a)], expanded
    return expanded, build_parser().parse_args(expanded)


def test_the_server_args_parse_and_bind_all_interfaces_on_the_probed_port():
    expanded, args = _serve_args()
    assert args.command == "serve"
    assert args.model == "default"
    assert args.host == "0.0.0.0" and args.port == PORT
    main = container("chatforge", "chatforge")
    assert args.threads == int(main["resources"]["limits"]["cpu"])
    cpu = env_map(main)["CPU_LIMIT"]["valueFrom"]["resourceFieldRef"]
    assert cpu["resource"] == "limits.cpu" and cpu["containerName"] == "chatforge"
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"http": PORT}


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_hit_the_servers_public_health_route(probe):
    from chatforge.serve.app import PUBLIC_PATHS

    main = container("chatforge", "chatforge")
    get = main[probe]["httpGet"]
    assert get["path"] == "/health" and get["path"] in PUBLIC_PATHS  # no API key needed
    assert get["port"] in ("http", PORT)
    # a slow first load is the startup probe's to wait for, not the liveness probe's
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_the_api_key_comes_from_the_secret_into_the_variable_serve_reads():
    from chatforge.env import API_KEY as API_KEY_ENV

    ref = env_map(container("chatforge", "chatforge"))[API_KEY_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "chatforge", "key": "api-key"}
    # Open WebUI sends the same key
    webui = env_map(container("open-webui", "open-webui"))
    assert webui["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == ref
    assert webui["RAG_OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == ref
    # and the documented `kubectl create secret` makes that secret with those keys
    keys = {
        r["valueFrom"]["secretKeyRef"]["key"]
        for c in (container("chatforge", "chatforge"), container("open-webui", "open-webui"))
        for r in c["env"]
        if "secretKeyRef" in r.get("valueFrom", {})
    }
    for text in [(ROOT / "docs" / "deployment.md").read_text(), K8S[0].read_text()]:
        # the command with its continuation lines
        command = re.search(r"kubectl create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", text)
        assert command, "no `kubectl create secret generic` command"
        assert command.group(1) == "chatforge"
        assert set(re.findall(r"--from-literal=([\w-]+)=", command.group(2))) == keys


def test_services_select_their_pods_and_target_named_ports():
    deployments = k8s_objects("Deployment")
    for name, service in k8s_objects("Service").items():
        template = deployments[name]["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        assert deployments[name]["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_open_webui_reaches_chatforge_through_its_service():
    from chatforge.serve.embeddings import MODEL_ID

    service = k8s_objects("Service")["chatforge"]
    (port,) = service["spec"]["ports"]
    url = f"http://{service['metadata']['name']}:{port['port']}/v1"
    webui = env_map(container("open-webui", "open-webui"))
    assert webui["OPENAI_API_BASE_URL"]["value"] == url
    assert webui["RAG_OPENAI_API_BASE_URL"]["value"] == url
    # documents are embedded by chatforge's /v1/embeddings, which the image installs
    assert webui["RAG_EMBEDDING_MODEL"]["value"] == MODEL_ID
    (extras,) = [
        i.value for i in dockerfile_instructions() if i.keyword == "ARG" and i.value.startswith("EXTRAS=")
    ]
    assert "embeddings" in extras.partition("=")[2].split(",")
    assert webui["ENABLE_OLLAMA_API"]["value"] == "false"
    assert webui["WEBUI_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "chatforge"
    # its data on its own PVC
    spec = pod_spec("open-webui")
    (data,) = [m for m in container("open-webui", "open-webui")["volumeMounts"] if m["name"] == "data"]
    assert data["mountPath"] == "/app/backend/data"
    (volume,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert volume["persistentVolumeClaim"]["claimName"] == "open-webui-data"


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_single_writer_deployments_recreate(deployment):
    # a ReadWriteOnce PVC cannot be mounted by the old and the new pod on different nodes
    spec = k8s_objects("Deployment")[deployment]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
