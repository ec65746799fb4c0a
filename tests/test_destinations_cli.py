"""`profilehook destinations create|list|show|delete` (README, Getting changes out) on the
embedded default: JSON forms, the secret printed once, refused URLs exit 1."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from profilehook.cli import main


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], env=env)
    return result.exit_code, result.output


def test_destinations_are_managed_from_the_shell(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    code, out = cli(
        data,
        "destinations",
        "create",
        "--workspace",
        "acme",
        "--url",
        "https://8.8.8.8/hook",
        "--property",
        "plan",
        "--property",
        "city",
        "--segment",
        "seg_1",
        "--description",
        "crm",
        "--json",
    )
    assert code == 0, out
    made = json.loads(out)
    assert made["secret"].startswith("whsec_")
    assert (made["properties"], made["segments"], made["description"]) == (
        ["plan", "city"],
        ["seg_1"],
        "crm",
    )
    destination_id = made["destination_id"]
    code, out = cli(data, "destinations", "list", "--workspace", "acme", "--json")
    assert code == 0 and [d["destination_id"] for d in json.loads(out)] == [destination_id]
    assert "secret" not in out
    code, out = cli(data, "destinations", "list", "--workspace", "other", "--json")
    assert code == 0 and json.loads(out) == []
    code, out = cli(data, "destinations", "show", destination_id, "--workspace", "acme")
    assert code == 0 and json.loads(out)["url"] == "https://8.8.8.8/hook"
    code, out = cli(data, "destinations", "delete", destination_id, "--workspace", "acme")
    assert code == 0 and "deleted" in out
    code, out = cli(data, "destinations", "show", destination_id, "--workspace", "acme")
    assert code == 1 and "not found" in out


def test_a_private_url_is_refused_unless_the_operator_allows_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    args = ("destinations", "create", "--workspace", "acme", "--url", "http://127.0.0.1:9/x")
    code, out = cli(data, *args)
    assert code == 1 and "https" in out
    code, out = cli(data, *args, "--json", env={"PROFILEHOOK_DESTINATIONS_ALLOW_PRIVATE": "1"})
    assert code == 0, out
    assert json.loads(out)["url"] == "http://127.0.0.1:9/x"
