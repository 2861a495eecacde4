"""docker-compose.yml: valid against the Compose Specification schema (the copy vendored in
check-jsonschema, so no network), and wired the way the stack needs: healthchecks on
/readyz, migrations before each service, services after their infrastructure."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_refs import REPO, SERVICES, load_compose


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_matches_the_compose_spec() -> None:
    result = _check_compose(REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = load_compose()
    broken["services"]["gateway"]["depends_on"]["auth"]["condition"] = "service_happy"
    broken["services"]["auth"]["healthcheck"]["intervall"] = "5s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _check_compose(path)
    assert result.returncode != 0 and "service_happy" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_infrastructure(compose: dict) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    for name in ("postgres", "rabbitmq"):
        assert services[name]["healthcheck"]["test"], name
        for volume in services[name].get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], f"{name}: volume {volume} is not a named volume"


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_service_wiring(compose: dict, package: str) -> None:
    folder, port = SERVICES[package]
    name = package.removeprefix("msp_")
    services = compose["services"]
    service, migrate = services[name], services[f"{name}-migrate"]

    assert service["build"]["dockerfile"] == f"{folder}/Dockerfile"
    assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert migrate["build"] == service["build"] and migrate["image"] == service["image"]
    assert service["command"] == ["python", "-m", package]
    assert migrate["command"] == ["python", "-m", package, "migrate"]
    assert migrate["restart"] == "no"

    check = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    assert service["environment"][f"MSP_{name.upper()}_PORT"] == str(port)
    assert service["environment"]["MSP_MIGRATE_ON_START"] == "false"
    assert service["environment"]["MSP_HTTP_HOST"] == "0.0.0.0"

    deps = service["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["rabbitmq"]["condition"] == "service_healthy"
    assert deps[f"{name}-migrate"]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dependencies_exist_and_gateway_comes_last(compose: dict) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    gateway = services["gateway"]
    for name in ("auth", "verify", "mail", "billing"):
        assert gateway["depends_on"][name]["condition"] == "service_healthy"
        assert gateway["environment"][f"MSP_{name.upper()}_URL"] == f"http://{name}:{SERVICES['msp_' + name][1]}"
    assert "127.0.0.1:8080:8080" in gateway["ports"]


def test_outside_systems_are_local_stand_ins(compose: dict) -> None:
    """Mail goes to the catcher and payments to the local Stripe server, never outside."""
    services = compose["services"]
    assert services["mail"]["environment"]["MSP_SMTP_HOST"] == "mailpit"
    assert services["mail"]["depends_on"]["mailpit"]["condition"] == "service_healthy"
    assert services["billing"]["environment"]["MSP_STRIPE_API_BASE"] == "http://stripe-local:12111"
    assert services["stripe-local"]["command"] == ["python", "-m", "msp_billing.stripe_local"]
