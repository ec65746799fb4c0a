"""The README cannot drift from the code: its commands and its settings table are checked."""

from __future__ import annotations

import re
from pathlib import Path

from profilehook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block, "README has no sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_first_two_commands_run_the_service_and_the_tests():
    assert _commands()[:2] == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(STAMP\)\n.*serve --quickstart", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)\n", makefile, re.M)


def test_ci_runs_exactly_the_readme_test_command():
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()


def test_the_settings_table_lists_every_setting_with_its_default():
    rows = dict(re.findall(r"^\| `(PROFILEHOOK_[A-Z_]+)` \| ([^|]+) \|", README, re.M))
    described = Settings().describe()
    assert set(rows) == {name for name, _, _ in described}
    for name, value, _ in described:
        shown = rows[name].strip().strip("`")
        assert shown == ("(empty)" if value == "" else value) or (
            name == "PROFILEHOOK_DATA_DIR" and shown == "./profilehook-data"
        ), name


def test_every_cli_command_in_the_readme_exists():
    from click.testing import CliRunner

    from profilehook.cli import main

    block = re.findall(r"^profilehook ([a-z]+)(?: ([a-z]+))?", README, re.M)
    assert block
    for group, sub in block:
        args = [group, sub, "--help"] if sub else [group, "--help"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Example" in result.output, f"{args}: help should end with an example"
