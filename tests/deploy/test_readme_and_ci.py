"""The README's promise: its first fenced block is exactly the two commands (bring the stack
up, run the tests), and CI runs that very test command."""
from __future__ import annotations

import re
import subprocess

import pytest

from deploy_refs import REPO


def _first_fenced_block(text: str) -> list[str]:
    match = re.search(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    assert match, "README.md has no fenced code block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def test_readme_first_block_is_the_two_commands() -> None:
    assert _first_fenced_block((REPO / "README.md").read_text()) == ["bash scripts/up.sh", "bash scripts/test.sh"]


def test_block_parser_sees_extra_commands() -> None:
    text = "intro\n\n```sh\nbash scripts/up.sh\nmake seed\nbash scripts/test.sh\n```\n"
    assert _first_fenced_block(text) == ["bash scripts/up.sh", "make seed", "bash scripts/test.sh"]


def test_ci_runs_the_readme_test_command() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert any(re.fullmatch(r"(exec )?bash scripts/test\.sh( .*)?", line) for line in commands), commands


@pytest.mark.parametrize("script", ["up.sh", "down.sh", "bootstrap.sh", "test.sh"])
def test_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_up_script_keeps_no_second_copy_of_the_seeded_login() -> None:
    """The Support login's defaults live in auth-service's settings; up.sh reads them there."""
    config = REPO / "auth-service" / "src" / "msp_auth" / "config.py"
    if not config.exists():
        pytest.skip("auth-service has no config.py yet")
    from msp_auth.config import AuthSettings

    defaults = AuthSettings.model_fields
    email = defaults["seed_support_email"].default
    password = defaults["seed_support_password"].default.get_secret_value()
    up = (REPO / "scripts" / "up.sh").read_text()
    assert email not in up and password not in up
    assert "seed_support_email" in up and "seed_support_password" in up
