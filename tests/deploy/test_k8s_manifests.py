"""deploy/k8s: every resource validates (strictly: unknown fields are errors) against the
Kubernetes OpenAPI schemas shipped inside the kubernetes-validate package, offline; and each
service has what production needs: probes, resources, a locked-down container, config and
secrets by reference, a Service, an autoscaler and a migration Job."""
from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from deploy_refs import K8S, REPO, SERVICES, k8s_resources

K8S_VERSION = "1.30.0"  # oldest minor the manifests promise to work on (deploy/README.md)
SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "KEY", "DATABASE_URL", "AMQP_URL", "USERNAME", "SID")


@pytest.fixture(scope="module")
def resources() -> list[tuple]:
    return k8s_resources()


def _find(resources: list, kind: str, name: str) -> dict:
    found = [doc for _, doc in resources if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def test_every_manifest_validates(resources: list) -> None:
    assert len(resources) >= 35
    failures = []
    for path, doc in resources:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except Exception as exc:  # collect them all: one report for the whole folder
            failures.append(f"{path.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc}")
    assert not failures, "\n".join(failures)


def test_validator_rejects_a_broken_deployment(resources: list) -> None:
    deployment = copy.deepcopy(_find(resources, "Deployment", "gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(_find(resources, "Deployment", "gateway"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert listed == present


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_service_resources(resources: list, package: str) -> None:
    name = package.removeprefix("msp_")
    _, port = SERVICES[package]
    deployment = _find(resources, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert container["command"] == ["python", "-m", package]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert [p["containerPort"] for p in container["ports"]] == [port]

    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = _find(resources, "Service", name)
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == port

    hpa = _find(resources, "HorizontalPodAutoscaler", name)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]

    job = _find(resources, "Job", f"{name}-migrate")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["python", "-m", package, "migrate"]
    assert migrate["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The Job sees the same settings as the service it migrates.
    assert migrate["envFrom"] == container["envFrom"] and migrate["env"] == container["env"]


def test_config_and_secrets_by_reference(resources: list) -> None:
    """No secret value in a manifest the kustomization applies: secret-looking settings come
    from a Secret by reference, and ConfigMaps hold none of them."""
    configmaps = {doc["metadata"]["name"]: doc for _, doc in resources if doc["kind"] == "ConfigMap"}
    for path, doc in resources:
        if doc["kind"] == "ConfigMap":
            leaked = [k for k in doc.get("data", {}) if any(w in k for w in SECRET_WORDS)]
            assert not leaked, f"{path.name} ConfigMap/{doc['metadata']['name']} holds secrets: {leaked}"
        if doc["kind"] == "Secret":
            assert path.name == "secrets.example.yaml", f"{path.name} ships a Secret"
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for env in container.get("env", []):
                if any(w in env["name"] for w in SECRET_WORDS):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]


def test_example_secrets_cover_every_reference(resources: list) -> None:
    """secrets.example.yaml documents every Secret key a workload references."""
    example = {doc["metadata"]["name"]: set(doc["stringData"]) for path, doc in resources
               if doc["kind"] == "Secret" and path.name == "secrets.example.yaml"}
    for path, doc in resources:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in example.get(ref["name"], set()), f"{path.name}: {ref}"


def test_deploy_readme_covers_production_brokers() -> None:
    text = (REPO / "deploy" / "README.md").read_text().lower()
    for phrase in ("quorum", "three nodes", "postgresql 15", "schema", "role"):
        assert phrase in text, phrase


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_production_never_runs_on_a_dev_secret(resources: list, package: str) -> None:
    """Every secret setting that has a development default (identity and sealing keys, and the
    service's own: Stripe keys, Twilio token, attachment master keys...) is set from a Secret
    in the service's Deployment; otherwise production would quietly use the public dev value."""
    import importlib
    import inspect

    from pydantic import SecretStr

    from deploy_refs import package_dir, settings_env_names

    if not (package_dir(package) / "config.py").exists():
        pytest.skip(f"{package} has no config.py yet")
    from msp_shared.config import ServiceSettings

    module = importlib.import_module(f"{package}.config")
    (cls,) = [c for _, c in inspect.getmembers(module, inspect.isclass)
              if issubclass(c, ServiceSettings) and c.__module__ == module.__name__]
    inherited = set(ServiceSettings.model_fields) - {"identity_secret", "seal_key"}
    needed = {}
    for name, info in cls.model_fields.items():
        if name in inherited or info.default is None:
            continue
        if info.annotation is SecretStr or "SecretStr" in str(info.annotation):
            needed[name] = {n for n in settings_env_names(cls) if n.endswith(name.upper())}

    (container,) = _find(resources, "Deployment", package.removeprefix("msp_"))["spec"]["template"]["spec"]["containers"]
    from_secrets = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    missing = [name for name, envs in needed.items() if not envs & from_secrets]
    assert not missing, f"{package}: secret settings left on their dev default in production: {missing}"


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_each_service_starts_on_its_manifest_and_never_on_the_dev_secrets(resources: list, package: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's settings, read from exactly what its Deployment gives it (ConfigMaps, and
    the Secrets' example values made real), validate; the same without the Secrets refuse to
    start, naming each secret left at its published development value."""
    import base64
    import importlib
    import inspect
    import os

    from pydantic import ValidationError

    from msp_shared.config import ServiceSettings, env_name

    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in resources if doc["kind"] == "ConfigMap"}
    example = {(doc["metadata"]["name"], key): value for path, doc in resources
               if doc["kind"] == "Secret" and path.name == "secrets.example.yaml" for key, value in doc["stringData"].items()}
    (container,) = _find(resources, "Deployment", package.removeprefix("msp_"))["spec"]["template"]["spec"]["containers"]
    plain: dict[str, str] = {}
    for source in container.get("envFrom", []):
        plain.update(configmaps[source["configMapRef"]["name"]])
    from_secrets: dict[str, str] = {}
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            plain[env["name"]] = env["value"]
            continue
        value = example[(ref["name"], ref["key"])]
        # What an operator puts in place of CHANGE-ME: random bytes, in the shape the example shows.
        fresh = base64.b64encode(os.urandom(32)).decode()
        from_secrets[env["name"]] = value.replace("CHANGE-ME-32-random-bytes-base64", fresh).replace(
            "CHANGE-ME-48-random-bytes-base64", fresh + "x" * 16).replace("CHANGE-ME", fresh)
    module = importlib.import_module(f"{package}.config")
    (cls,) = [c for _, c in inspect.getmembers(module, inspect.isclass)
              if issubclass(c, ServiceSettings) and c.__module__ == module.__name__]
    for name in [n for n in os.environ if n.startswith("MSP_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(REPO / "deploy")  # no .env file here
    for name, value in plain.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:  # the ConfigMaps alone: dev secrets, refused
        cls()
    left = str(refused.value)
    assert "development values" in left and "MSP_IDENTITY_SECRET" in left and "MSP_SEAL_KEY" in left

    for name, value in from_secrets.items():
        monkeypatch.setenv(name, value)
    settings = cls()
    assert not settings.public_url.startswith(("http://127.0.0.1", "http://localhost"))
    assert {env_name(cls, name) for name in settings.secrets_in_use()} <= set(from_secrets)
    monkeypatch.delenv("MSP_IDENTITY_SECRET")  # one left out: refused, printing none of the others
    with pytest.raises(ValidationError) as again:
        cls()
    assert "MSP_IDENTITY_SECRET" in str(again.value)
    printed = str(again.value)  # pydantic would show the input's first and last characters
    assert not [name for name, value in from_secrets.items() if value[:12] in printed or value[-12:] in printed]
