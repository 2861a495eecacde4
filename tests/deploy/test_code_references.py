"""Every `python -m` module that docker-compose.yml, the Dockerfiles and the Kubernetes
manifests start exists in this repository, and every MSP_* name they set is one the process
really reads (a typo'd setting would be silently ignored by pydantic-settings)."""
from __future__ import annotations

import re

import pytest

from deploy_refs import (
    REPO, SERVICES, Process, all_processes, env_names_read_by, module_exists, package_dir, package_of,
    settings_env_names,
)


def _written(package: str) -> bool:
    return (package_dir(package) / "config.py").exists()


def _processes_of(package: str) -> list[Process]:
    return [p for p in all_processes() if package_of(p.module) == package]


def test_every_process_runs_a_service_module() -> None:
    processes = all_processes()
    assert len(processes) >= 25  # compose (5 services, 5 migrations, stripe-local), 5 Dockerfiles, 10 k8s
    strangers = [p.where for p in processes if package_of(p.module) not in SERVICES]
    assert not strangers, f"these start something that is not one of the services: {strangers}"


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_modules_exist(package: str) -> None:
    if not _written(package):
        pytest.skip(f"{package} has no config.py yet (service not written)")
    missing = sorted({f"{p.module} ({p.where})" for p in _processes_of(package) if not module_exists(p.module)})
    assert not missing, f"`python -m` targets with no code behind them: {missing}"


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_env_names_are_real_settings(package: str) -> None:
    if not _written(package):
        pytest.skip(f"{package} has no config.py yet (service not written)")
    problems = []
    for process in _processes_of(package):
        if not module_exists(process.module):
            continue  # reported by test_modules_exist
        unknown = process.env - env_names_read_by(process.module)
        if unknown:
            problems.append(f"{process.where} ({process.module}): {sorted(unknown)}")
    assert not problems, "MSP_* names no code reads:\n" + "\n".join(problems)


def test_up_script_env_names_are_real_settings() -> None:
    """scripts/up.sh exports settings for the processes it starts; its own knobs are MSP_UP_*."""
    if not all(_written(p) for p in SERVICES):
        pytest.skip("not every service has its config.py yet")
    known: set[str] = set()
    for package in SERVICES:
        known |= env_names_read_by(package)
    for helper in ("msp_mail.devsmtp", "msp_verify.twilio_local", "msp_billing.stripe_local"):
        if module_exists(helper):
            known |= env_names_read_by(helper)
    used = set(re.findall(r"\bMSP_[A-Z0-9_]+\b", (REPO / "scripts" / "up.sh").read_text()))
    unknown = {name for name in used if not name.startswith("MSP_UP_")} - known
    assert not unknown, f"scripts/up.sh uses MSP_* names no code reads: {sorted(unknown)}"


def test_env_name_collection_follows_pydantic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: an aliased field is read under its alias only, a plain field under
    prefix + name; compared with what pydantic-settings really does."""
    from pydantic import AliasChoices, Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Probe(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="MSP_")
        http_port: int = Field(1, validation_alias=AliasChoices("MSP_PROBE_PORT", "http_port"))
        smtp_host: str = "x"

    names = settings_env_names(Probe)
    assert names == {"MSP_PROBE_PORT", "HTTP_PORT", "MSP_SMTP_HOST"}
    monkeypatch.setenv("MSP_PROBE_PORT", "7")
    monkeypatch.setenv("MSP_SMTP_HOST", "relay")
    monkeypatch.setenv("MSP_HTTP_PORT", "9")  # not a name this class reads
    probe = Probe()
    assert (probe.http_port, probe.smtp_host) == (7, "relay")


def test_up_script_modules_exist() -> None:
    up = (REPO / "scripts" / "up.sh").read_text()
    modules = set(re.findall(r'-m "?(msp_[a-z_.$]+)', up))
    expanded = {m.replace("$svc", s.removeprefix("msp_")) if "$svc" in m else m
                for m in modules for s in (SERVICES if "$svc" in m else [""])}
    assert {"msp_mail.devsmtp", "msp_billing.stripe_local", "msp_verify.twilio_local", *SERVICES} <= expanded
    missing = sorted(m for m in expanded if _written(package_of(m)) and not module_exists(m))
    assert not missing, f"scripts/up.sh starts modules that do not exist: {missing}"


def test_settings_named_in_the_docs_are_real_settings() -> None:
    """README.md and deploy/README.md tell operators which MSP_* names to set (the retention
    table, the outside systems): each must be one some process reads. `MSP_SMTP_*` names a
    family; MSP_UP_* are the up script's own knobs."""
    known: set[str] = set()
    for package in SERVICES:
        known |= env_names_read_by(package)
    for helper in ("msp_mail.devsmtp", "msp_verify.twilio_local", "msp_billing.stripe_local"):
        known |= env_names_read_by(helper)
    problems = {}
    for doc in (REPO / "README.md", REPO / "deploy" / "README.md"):
        text = doc.read_text()
        named = {m.group(0) for m in re.finditer(r"\bMSP_[A-Z0-9_]+\b(?!\*)", text)}
        unknown = {n for n in named if not n.startswith("MSP_UP_") and not n.endswith("_")} - known
        if unknown:
            problems[doc.name] = sorted(unknown)
    assert "MSP_INBOX_RETENTION_DAYS" in known
    assert not problems, f"the docs name settings no code reads: {problems}"
