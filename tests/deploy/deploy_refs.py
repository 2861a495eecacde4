"""Reading the deployment files (docker-compose.yml, the Dockerfiles, deploy/k8s/*.yaml,
scripts/up.sh) and the code they refer to: which `python -m` modules each process runs,
which MSP_* environment variables it is given, and which names the code really reads."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SERVICES = {  # package -> (service folder, default port)
    "msp_auth": ("auth-service", 8101),
    "msp_verify": ("verify-service", 8102),
    "msp_mail": ("mail-service", 8103),
    "msp_billing": ("billing-service", 8104),
    "msp_gateway": ("gateway", 8080),
}
ENV_NAME = re.compile(r"\bMSP_[A-Z0-9_]+\b")
ENV_READ = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["'](MSP_[A-Z0-9_]+)["']""")


@dataclass
class Process:
    """One process some deployment file starts: where, which module, which MSP_* names."""

    where: str
    module: str
    env: set[str] = field(default_factory=set)


def python_module(argv: list[str]) -> str | None:
    """The module of a `python -m MODULE ...` command line, or None."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and Path(argv[0]).name.startswith("python"):
            return argv[i + 1]
    return None


def package_of(module: str) -> str:
    return module.split(".")[0]


def package_dir(package: str) -> Path:
    folder, _ = SERVICES[package]
    return REPO / folder / "src" / package


# ---- the code side ---------------------------------------------------------------------------

def settings_env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables pydantic-settings reads for a settings class: a field with a
    validation alias is read under the alias (choices: each string), otherwise under the
    env prefix + field name. Matching is case-insensitive, so names are upper-cased."""
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def module_exists(module: str) -> bool:
    """True when `python -m module` would run code of this repository."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(REPO):
        return False
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return True


def env_names_read_by(module: str) -> set[str]:
    """Every MSP_* name the process `python -m module` reads: its settings classes' names
    (the service's Settings for a package, the classes a submodule uses for a helper like
    msp_mail.devsmtp), and names read literally with os.environ/getenv in its source."""
    names: set[str] = set()
    if "." not in module:
        mod = importlib.import_module(f"{module}.config")
        from msp_shared.config import ServiceSettings

        classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(c, ServiceSettings) and c.__module__ == mod.__name__]
        source_files = list(package_dir(module).glob("__main__.py"))
    else:
        mod = importlib.import_module(module)
        classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(c, BaseSettings) and c is not BaseSettings]
        source_files = [Path(mod.__file__)]
    for cls in classes:
        names |= settings_env_names(cls)
    for path in source_files:
        names |= set(ENV_READ.findall(path.read_text()))
    return names


# ---- the deployment side ---------------------------------------------------------------------

def load_compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def k8s_files() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]] + [K8S / "secrets.example.yaml"]


def k8s_resources() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose_processes() -> Iterator[Process]:
    for name, svc in load_compose()["services"].items():
        command = svc.get("command")
        argv = shlex.split(command) if isinstance(command, str) else command
        module = python_module(argv) if argv else None
        if module is None:
            continue
        env = svc.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else (item.split("=", 1)[0] for item in env)
        yield Process(f"docker-compose.yml services.{name}", module, {k for k in keys if k.startswith("MSP_")})


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_processes() -> Iterator[Process]:
    import json

    for package, (folder, _) in SERVICES.items():
        path = REPO / folder / "Dockerfile"
        cmd = [json.loads(args) for word, args in dockerfile_instructions(path) if word == "CMD"]
        yield Process(f"{folder}/Dockerfile", python_module(cmd[-1]) if cmd else "", set(ENV_NAME.findall(path.read_text())))


def k8s_processes() -> Iterator[Process]:
    resources = k8s_resources()
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for _, doc in resources if doc["kind"] == "ConfigMap"}
    for path, doc in resources:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            module = python_module(container.get("command", []) + container.get("args", []))
            env = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    env |= set(configmaps[source["configMapRef"]["name"]])
            yield Process(f"{path.relative_to(REPO)} {doc['kind']}/{doc['metadata']['name']}", module or "",
                          {e for e in env if e.startswith("MSP_")})


def all_processes() -> list[Process]:
    return [*compose_processes(), *dockerfile_processes(), *k8s_processes()]
