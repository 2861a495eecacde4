"""Each service's Dockerfile: python:3.11-slim, the locked environment installed by uv for
that one package, a non-root user, a health check on /readyz, the right port and command."""
from __future__ import annotations

import json
import re
import tomllib

import pytest

from deploy_refs import REPO, SERVICES, dockerfile_instructions


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_dockerfile(package: str) -> None:
    folder, port = SERVICES[package]
    path = REPO / folder / "Dockerfile"
    steps = dockerfile_instructions(path)
    words = [word for word, _ in steps]
    args = lambda word: [a for w, a in steps if w == word]  # noqa: E731

    froms = args("FROM")
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f.split()[0] == "python:3.11-slim" for f in froms)
    dist = package.replace("_", "-")
    assert any(f"uv sync --frozen --package {dist} --no-dev" in a for a in args("RUN"))

    # Runtime stage: everything after the last FROM.
    runtime = steps[len(steps) - 1 - words[::-1].index("FROM"):]
    users = [a for w, a in runtime if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [a for w, a in runtime if w == "EXPOSE"] == [str(port)]
    health = " ".join(a for w, a in runtime if w == "HEALTHCHECK")
    assert "/readyz" in health and f"'{port}'" in health
    assert json.loads(args("CMD")[-1]) == ["python", "-m", package]


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_dockerfile_copies_what_exists(package: str) -> None:
    """Every COPY source exists, and every workspace member's pyproject.toml is copied (uv
    needs them all to read the workspace)."""
    folder, _ = SERVICES[package]
    steps = dockerfile_instructions(REPO / folder / "Dockerfile")
    sources = []
    for word, arg in steps:
        if word == "COPY" and "--from" not in arg:
            sources += arg.split()[:-1]
    for source in sources:
        assert (REPO / source).exists(), f"{folder}/Dockerfile copies {source}, which does not exist"
    members = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    for member in members:
        assert f"{member}/pyproject.toml" in sources


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".env", "var/"} <= ignored
    # ... but nothing an image copies.
    for package, (folder, _) in SERVICES.items():
        for word, arg in dockerfile_instructions(REPO / folder / "Dockerfile"):
            if word == "COPY" and "--from" not in arg:
                for source in arg.split()[:-1]:
                    assert not any(re.fullmatch(pattern.rstrip("/").replace("*", ".*"), source.rstrip("/"))
                                   for pattern in ignored), f"{source} is copied but ignored"
