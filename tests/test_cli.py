"""The ``profilehook`` command as scripts and operators use it (SPEC 4), in subprocesses."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from profilehook.settings import Settings
from tests.support import ServerProcess, cli_env, create_key, free_port, run_cli, wait_until
from tests.test_copernica import Hook, profile_call
from tests.test_copernica_signature import ACCOUNT, KEY_ID, pem

pytestmark = pytest.mark.slow

APPLY_TIMEOUT_S = 20.0
APPLIED = ("applied", "duplicate")  # a duplicate's first copy was applied


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir).start()
    try:
        yield proc
    finally:
        proc.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def send(server: ServerProcess, key: str, **event: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/properties", json=event, headers=bearer(key), timeout=10
    )


def update(contact_id: str, event_id: str, timestamp: float, **properties: Any) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "event_name": "update",
        "timestamp": timestamp,
        "event_id": event_id,
        "user_properties": properties,
    }


def wait_applied(server: ServerProcess, key: str, *event_ids: str) -> None:
    def applied(event_id: str) -> bool:
        response = httpx.get(f"{server.base_url}/v1/events/{event_id}", headers=bearer(key))
        return response.status_code == 200 and response.json()["status"] in APPLIED

    for event_id in event_ids:
        wait_until(lambda eid=event_id: applied(eid), timeout_s=APPLY_TIMEOUT_S)


def test_keys_create_json_prints_exactly_key_key_id_workspace_and_scopes(data_dir: Path) -> None:
    result = run_cli(data_dir, "keys", "create", "--workspace", "acme", "--json")

    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"key", "key_id", "workspace", "scopes"}
    assert created["workspace"] == "acme"
    assert created["scopes"] == ["ingest", "read"]  # the default
    assert created["key"].startswith("phk_") and created["key_id"] in created["key"]


def test_keys_list_shows_ids_and_workspaces_but_never_the_keys(data_dir: Path) -> None:
    first = create_key(data_dir, "acme")
    second = create_key(data_dir, "globex")
    secrets = [k["key"] for k in (first, second)]

    plain = run_cli(data_dir, "keys", "list")
    as_json = run_cli(data_dir, "keys", "list", "--json")

    assert plain.returncode == as_json.returncode == 0, plain.stderr + as_json.stderr
    for output in (plain.stdout, as_json.stdout):
        for created in (first, second):
            assert created["key_id"] in output
            assert created["key"] not in output
            assert created["key"].split("_", 2)[2] not in output  # not even the secret part
    rows = json.loads(as_json.stdout)
    assert [(r["key_id"], r["workspace"], r["scopes"], r["revoked_at"]) for r in rows] == [
        (first["key_id"], "acme", ["ingest", "read"], None),
        (second["key_id"], "globex", ["ingest", "read"], None),
    ]
    assert "ingest,read" in plain.stdout
    assert not any(secret in json.dumps(rows) for secret in secrets)
    only_acme = json.loads(
        run_cli(data_dir, "keys", "list", "--workspace", "acme", "--json").stdout
    )
    assert [r["key_id"] for r in only_acme] == [first["key_id"]]


def test_given_a_running_server_when_a_key_is_revoked_then_the_next_request_is_refused(
    data_dir: Path,
) -> None:
    """Given a running server and two keys of one workspace, when one key is revoked from
    the shell, then the very next request with it is a 401 and the other key keeps working."""
    revoked, kept = create_key(data_dir), create_key(data_dir)
    server = ServerProcess(data_dir).start()
    try:
        assert send(server, revoked["key"], **update("c1", "before", 1, a=1)).status_code == 202

        result = run_cli(data_dir, "keys", "revoke", revoked["key_id"])
        assert result.returncode == 0, result.stderr

        refused = send(server, revoked["key"], **update("c1", "after", 2, a=2))
        assert refused.status_code == 401
        assert refused.json() == {"detail": "Invalid API Key"}
        read = httpx.get(f"{server.base_url}/v1/contacts/c1", headers=bearer(revoked["key"]))
        assert (read.status_code, read.json()) == (401, {"detail": "Invalid API Key"})
        assert send(server, kept["key"], **update("c1", "other", 3, a=3)).status_code == 202
    finally:
        server.stop()
    listed = json.loads(run_cli(data_dir, "keys", "list", "--json").stdout)
    revoked_at = {r["key_id"]: r["revoked_at"] for r in listed}
    assert revoked_at[revoked["key_id"]] is not None
    assert revoked_at[kept["key_id"]] is None


def test_revoking_an_unknown_key_id_fails_with_a_clear_message(data_dir: Path) -> None:
    create_key(data_dir)
    result = run_cli(data_dir, "keys", "revoke", "000000000000")

    assert result.returncode != 0
    assert "No key with id '000000000000'" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_lists_every_profilehook_variable_with_its_value(data_dir: Path) -> None:
    result = run_cli(data_dir, "settings", PROFILEHOOK_PORT="9123")

    assert result.returncode == 0, result.stderr
    listed = {
        line.split("=", 1)[0] for line in result.stdout.splitlines() if line.startswith("PROFILE")
    }
    assert listed == {f"PROFILEHOOK_{f.name.upper()}" for f in fields(Settings)}
    assert "PROFILEHOOK_PORT=9123" in result.stdout.splitlines()
    assert f"PROFILEHOOK_DATA_DIR={data_dir}" in result.stdout.splitlines()


@pytest.mark.parametrize("command", [["settings"], ["check"], ["serve"]])
def test_a_bad_port_value_is_a_clear_error_not_a_traceback(
    data_dir: Path, command: list[str]
) -> None:
    result = run_cli(data_dir, *command, PROFILEHOOK_PORT="eighty")

    assert result.returncode != 0
    assert "PROFILEHOOK_PORT='eighty'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_exits_0_when_the_log_and_the_store_answer(data_dir: Path) -> None:
    result = run_cli(data_dir, "check")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_given_an_event_sent_through_the_server_then_contacts_get_and_events_get_print_json(
    data_dir: Path, server: ServerProcess
) -> None:
    key = create_key(data_dir, "acme")["key"]
    response = send(server, key, **update("user-1", "evt-1", 1_700_000_000, plan="pro"))
    assert response.status_code == 202, response.text
    wait_applied(server, key, "evt-1")

    contact = run_cli(data_dir, "contacts", "get", "user-1", "--workspace", "acme")
    event = run_cli(data_dir, "events", "get", "evt-1", "--workspace", "acme")

    assert contact.returncode == event.returncode == 0, contact.stderr + event.stderr
    over_http = httpx.get(f"{server.base_url}/v1/contacts/user-1", headers=bearer(key)).json()
    assert json.loads(contact.stdout) == over_http
    assert json.loads(contact.stdout)["properties"] == {"plan": "pro"}
    printed_event = json.loads(event.stdout)
    assert printed_event["event_id"] == "evt-1"
    assert printed_event["status"] == "applied"
    assert printed_event["contact_id"] == "user-1"


def test_contacts_get_and_events_get_of_unknown_ids_fail_clearly(data_dir: Path) -> None:
    contact = run_cli(data_dir, "contacts", "get", "nobody", "--workspace", "acme")
    event = run_cli(data_dir, "events", "get", "nothing", "--workspace", "acme")

    assert (contact.returncode, event.returncode) == (1, 1)
    assert "Contact not found" in contact.stderr
    assert "Event not found" in event.stderr


def test_given_profiles_when_exported_while_serving_then_each_line_is_the_contact_over_http(
    data_dir: Path, server: ServerProcess, tmp_path: Path
) -> None:
    key = create_key(data_dir, "acme")["key"]
    other = create_key(data_dir, "other")["key"]
    sent = [update(f"user-{i}", f"evt-{i}", 1_700_000_000 + i, plan="pro", n=i) for i in range(3)]
    sent.append(update("user-1", "evt-old", 1_600_000_000, plan="old", region="eu"))
    for body in sent:
        assert send(server, key, **body).status_code == 202
    assert send(server, other, **update("theirs", "evt-x", 1_700_000_000, n=9)).status_code == 202
    wait_applied(server, key, *(body["event_id"] for body in sent))
    output = tmp_path / "out" / "profiles.jsonl"
    output.parent.mkdir()
    output.write_text("an older export\n")

    to_file = run_cli(data_dir, "export", "--workspace", "acme", "-o", str(output), "--json")
    to_stdout = run_cli(data_dir, "export", "--workspace", "acme")

    assert to_file.returncode == to_stdout.returncode == 0, to_file.stderr + to_stdout.stderr
    assert json.loads(to_file.stdout) == {"workspace": "acme", "contacts": 3, "output": str(output)}
    over_http = [_profiles(server, key, [f"user-{i}"])[f"user-{i}"] for i in range(3)]
    assert [json.loads(line) for line in output.read_text().splitlines()] == over_http
    assert to_stdout.stdout == output.read_text()
    assert over_http[1]["properties"] == {"plan": "pro", "n": 1, "region": "eu"}
    assert sorted(p.name for p in output.parent.iterdir()) == ["profiles.jsonl"]


def test_export_refusals_are_clear_and_leave_no_file(data_dir: Path, tmp_path: Path) -> None:
    summary_on_stdout = run_cli(data_dir, "export", "--workspace", "acme", "--json")
    missing_dir = run_cli(
        data_dir, "export", "--workspace", "acme", "-o", str(tmp_path / "nowhere" / "p.jsonl")
    )

    assert summary_on_stdout.returncode == 2
    assert "give --output FILE" in summary_on_stdout.stderr
    assert missing_dir.returncode == 1
    assert "Cannot write" in missing_dir.stderr and "Traceback" not in missing_dir.stderr
    assert not (tmp_path / "nowhere").exists()


def test_given_applied_events_when_rebuild_runs_with_the_server_stopped_then_profiles_are_equal(
    data_dir: Path,
) -> None:
    """Given profiles built from out-of-order updates, unsets and repeats, when the server is
    stopped and ``profilehook rebuild`` runs, then every profile reads exactly as before."""
    key = create_key(data_dir, "acme")["key"]
    events = [
        update("r1", "r1-new", 1_700_000_300, plan="pro", seats=5),
        update("r1", "r1-old", 1_700_000_100, plan="free", region="eu"),
        update("r1", "r1-unset", 1_700_000_200, region=None),
        update("r2", "r2-a", 1_700_000_000, tags=["a", "b"], nested={"x": 1}),
        update("r2", "r2-b", 1_700_000_000, tags=["c"]),
        update("r2", "r2-a", 1_700_000_999, tags=["repeat ignored"]),
        update("r3", "r3-a", 1_700_000_000.5, score=1.5),
    ]
    server = ServerProcess(data_dir).start()
    try:
        for event in events:
            assert send(server, key, **event).status_code == 202
        wait_applied(server, key, *{e["event_id"] for e in events})
        before = _profiles(server, key, ["r1", "r2", "r3"])
        server.stop()

        result = run_cli(data_dir, "rebuild")
        assert result.returncode == 0, result.stderr
        assert "Rebuilt profiles from 6 events" in result.stdout

        server.start()
        after = _profiles(server, key, ["r1", "r2", "r3"])
    finally:
        server.stop()
    assert after == before
    assert before["r1"]["properties"] == {"plan": "pro", "seats": 5}
    assert before["r2"]["properties"] == {"tags": ["c"], "nested": {"x": 1}}


def _profiles(server: ServerProcess, key: str, contact_ids: list[str]) -> dict[str, Any]:
    found = {}
    for contact_id in contact_ids:
        response = httpx.get(f"{server.base_url}/v1/contacts/{contact_id}", headers=bearer(key))
        assert response.status_code == 200, response.text
        found[contact_id] = response.json()
    return found


def test_given_a_metrics_port_when_a_worker_runs_then_its_metrics_are_served(
    tmp_path: Path,
) -> None:
    """Workers apply out of sight of `serve`: their own metrics show apply lag and counts."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "profilehook", "worker", "--metrics-port", str(port)],
        env=cli_env(tmp_path / "data"),
    )
    try:

        def scrape() -> str | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except httpx.HTTPError:
                return None

        text = wait_until(scrape)
        assert "profilehook_apply_lag_seconds_bucket" in text
        assert "profilehook_queue_depth" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_given_a_data_dir_in_an_older_format_then_commands_and_serve_refuse_it_clearly(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "log.sqlite3") as old:  # the log as the first builds wrote it
        old.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, event_id TEXT, body BLOB)")
        old.execute("INSERT INTO log (event_id, body) VALUES ('e1', x'00')")

    result = run_cli(data_dir, "check")

    assert result.returncode == 1
    assert "another profilehook version" in result.stderr
    assert "log.sqlite3" in result.stderr
    with pytest.raises(RuntimeError, match="another profilehook version"):
        ServerProcess(data_dir).start()
    with sqlite3.connect(data_dir / "log.sqlite3") as kept:  # and nothing of it was changed
        assert kept.execute("SELECT event_id FROM log").fetchall() == [("e1",)]
        assert kept.execute("PRAGMA user_version").fetchone() == (0,)


def test_given_keys_made_before_files_had_versions_then_they_keep_working(tmp_path: Path) -> None:
    # A file without a version stamp is read as version 1 (and migrated; here it had scopes).
    data_dir = tmp_path / "data"
    key = create_key(data_dir)["key"]
    with sqlite3.connect(data_dir / "profiles.catalog.sqlite3") as catalog:
        catalog.execute("PRAGMA user_version = 0")

    server = ServerProcess(data_dir).start()
    try:
        answer = httpx.get(
            f"{server.base_url}/v1/contacts/nobody", headers={"Authorization": f"Bearer {key}"}
        )
    finally:
        server.stop()

    assert answer.status_code == 404  # the key is known: not a 401


# -- rotating a source's secret ----------------------------------------------------------------


@pytest.fixture(scope="module")
def copernica_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def create_copernica(data_dir: Path, key: rsa.RSAPrivateKey, *options: str) -> dict[str, Any]:
    """A Copernica source pinning ``key``, made with the CLI as the README says."""
    pem_file = data_dir.parent / "copernica.pem"
    pem_file.write_bytes(pem(key))
    made = run_cli(
        data_dir,
        *("sources", "create", "copernica", "--workspace", "acme", "--account", ACCOUNT),
        *("--public-key", f"{KEY_ID}={pem_file}", *options, "--json"),
    )
    assert made.returncode == 0, made.stderr
    created: dict[str, Any] = json.loads(made.stdout)
    return created


def signed_call(server: ServerProcess, key: rsa.RSAPrivateKey, url: str) -> httpx.Response:
    """A profile update signed as Copernica signs it, posted to ``url`` (its token included)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        hook = Hook(client, f"127.0.0.1:{server.port}", parts.path.rsplit("/", 1)[1], {}, key)
        response: httpx.Response = hook.post(profile_call({"plan": "pro"}), target=target)
        return response


def test_given_a_copernica_source_without_a_token_when_rotated_then_it_is_refused_and_calls_pass(
    data_dir: Path, copernica_key: rsa.RSAPrivateKey
) -> None:
    """Given a Copernica source checked by its signature alone, when an operator rotates it,
    then the rotation is refused with a reason, nothing changes, and signed calls still pass
    (before the fix, rotating added a ?token= check that refused every call: lost updates)."""
    source = create_copernica(data_dir, copernica_key)

    rotated = run_cli(data_dir, "sources", "rotate", source["source_id"])
    dropped = run_cli(data_dir, "sources", "rotate", source["source_id"], "--drop-previous")

    server = ServerProcess(data_dir).start()
    try:
        accepted = signed_call(server, copernica_key, source["url"])
    finally:
        server.stop()
    assert accepted.status_code == 200, accepted.text
    for refused in (rotated, dropped):
        assert refused.returncode == 1, refused.stdout
        assert "has no secret to rotate" in refused.stderr and "without a token" in refused.stderr
        assert "Nothing was changed" in refused.stderr and "Traceback" not in refused.stderr
    shown = json.loads(run_cli(data_dir, "sources", "show", source["source_id"]).stdout)
    assert shown["active_secrets"] == 0


def test_given_a_copernica_source_with_a_token_when_rotated_then_its_new_url_works_beside_the_old(
    data_dir: Path, copernica_key: rsa.RSAPrivateKey
) -> None:
    """Given a source with a ?token=, a rotation prints the new URL; both URLs work until
    --drop-previous; a second rotation before that is refused rather than revoke the old."""
    source = create_copernica(data_dir, copernica_key, "--token")
    source_id, first_url = source["source_id"], source["url"]

    rotation = run_cli(data_dir, "sources", "rotate", source_id)
    assert rotation.returncode == 0, rotation.stderr
    second_url = rotation.stdout.splitlines()[1].strip()  # as an operator copies it
    assert second_url.startswith(f"{first_url.split('?')[0]}?token=phs_")
    assert second_url != first_url
    assert "The previous URL keeps working until --drop-previous" in rotation.stdout
    again = run_cli(data_dir, "sources", "rotate", source_id)
    assert again.returncode == 1
    assert "2 active secrets already" in again.stderr
    assert f"profilehook sources rotate {source_id} --drop-previous" in again.stderr
    assert "--revoke-oldest" in again.stderr

    server = ServerProcess(data_dir).start()
    try:
        assert signed_call(server, copernica_key, first_url).status_code == 200
        assert signed_call(server, copernica_key, second_url).status_code == 200
        dropped = run_cli(data_dir, "sources", "rotate", source_id, "--drop-previous")
        assert dropped.returncode == 0, dropped.stderr
        old = signed_call(server, copernica_key, first_url)
        assert (old.status_code, old.json()) == (401, {"detail": "Wrong ?token= for this source"})
        assert signed_call(server, copernica_key, second_url).status_code == 200
    finally:
        server.stop()


def test_given_a_rotation_under_way_then_only_revoke_oldest_rotates_again(data_dir: Path) -> None:
    made = run_cli(data_dir, "sources", "create", "amplitude", "--workspace", "acme", "--json")
    source_id = json.loads(made.stdout)["source_id"]
    assert run_cli(data_dir, "sources", "rotate", source_id).returncode == 0

    refused = run_cli(data_dir, "sources", "rotate", source_id, "--json")
    forced = run_cli(data_dir, "sources", "rotate", source_id, "--revoke-oldest", "--json")

    assert (refused.returncode, refused.stdout) == (1, "")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["secret"].startswith("phs_")
    shown = json.loads(run_cli(data_dir, "sources", "show", source_id).stdout)
    assert shown["active_secrets"] == 2


# -- settings and arguments that cannot work ---------------------------------------------------


@pytest.mark.parametrize("port", ["85538", "0", "-1"])
def test_a_port_out_of_range_is_a_usage_error_not_another_port(data_dir: Path, port: str) -> None:
    by_flag = run_cli(data_dir, "serve", "--port", port)
    by_env = run_cli(data_dir, "serve", PROFILEHOOK_PORT=port)

    assert by_flag.returncode == 2, by_flag.stderr
    assert "Invalid value for '--port'" in by_flag.stderr and "1<=x<=65535" in by_flag.stderr
    assert by_env.returncode == 1, by_env.stderr
    assert by_env.stderr == f"Error: PROFILEHOOK_PORT must be 1-65535, not {int(port)}\n" or (
        by_env.stderr == f"Error: PROFILEHOOK_PORT must be 1 or more, not {int(port)}\n"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROFILEHOOK_MAX_SINGLE_BODY_BYTES", "0"),
        ("PROFILEHOOK_MAX_BATCH_BODY_BYTES", "-5"),
        ("PROFILEHOOK_MAX_COPERNICA_BODY_BYTES", "0"),
        ("PROFILEHOOK_MAX_AMPLITUDE_BODY_BYTES", "-1"),
        ("PROFILEHOOK_RATE_LIMIT_PER_S", "-1"),
        ("PROFILEHOOK_RATE_LIMIT_BURST", "0"),
        ("PROFILEHOOK_APPLY_BATCH_MAX_EVENTS", "0"),
        ("PROFILEHOOK_HISTORY_RETENTION_DAYS", "-1"),
        ("PROFILEHOOK_BACKEND_TIMEOUT_S", "nan"),
        ("PROFILEHOOK_HEADER_TIMEOUT_S", "inf"),
        ("PROFILEHOOK_LOG_LEVEL", "loud"),
    ],
)
@pytest.mark.parametrize("command", [["settings"], ["serve"]])
def test_a_setting_that_cannot_work_is_one_clear_line_and_exit_1(
    data_dir: Path, command: list[str], variable: str, value: str
) -> None:
    result = run_cli(data_dir, *command, **{variable: value})

    assert result.returncode == 1, result.stdout
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"Error: {variable} must be")


def test_a_bad_log_level_flag_is_named_too(data_dir: Path) -> None:
    result = run_cli(data_dir, "--log-level", "verbose", "check")

    assert result.returncode == 1
    assert result.stderr == (
        "Error: PROFILEHOOK_LOG_LEVEL must be one of debug, info, warning, error, not 'verbose'\n"
    )


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
@pytest.mark.parametrize(
    "command",
    [
        ["keys", "create"],
        ["sources", "create", "amplitude"],
        ["sources", "create", "copernica", "--account", "1"],
        ["import", "FILE"],
        ["export"],
        ["contacts", "get", "user123"],
        ["events", "get", "e1"],
        ["keys", "list"],
        ["sources", "list"],
    ],
)
def test_an_empty_workspace_name_is_a_usage_error(
    data_dir: Path, tmp_path: Path, command: list[str], blank: str
) -> None:
    file = tmp_path / "events.jsonl"
    file.write_text('{"contact_id": "c1"}\n')
    args = [str(file) if word == "FILE" else word for word in command]

    result = run_cli(data_dir, *args, "--workspace", blank)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Invalid value for '--workspace'" in result.stderr
    assert "a workspace name cannot be empty or blank" in result.stderr
    assert run_cli(data_dir, "keys", "list", "--json").stdout.strip() in ("", "[]")


# -- the URLs `sources` prints -----------------------------------------------------------------


def test_without_a_public_url_sources_create_says_the_url_is_local_and_how_to_set_it(
    data_dir: Path,
) -> None:
    result = run_cli(
        data_dir,
        "sources",
        "create",
        "amplitude",
        "--workspace",
        "acme",
        "--json",
        PROFILEHOOK_PORT="9123",
    )

    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)  # the note goes to standard error: JSON stays clean
    assert created["url"] == f"http://127.0.0.1:9123/v1/webhooks/{created['source_id']}"
    assert "cannot reach 127.0.0.1" in result.stderr
    assert "Set PROFILEHOOK_PUBLIC_URL (or --public-url" in result.stderr


@pytest.mark.parametrize("how", ["env", "flag"])
def test_with_a_public_url_every_printed_url_starts_with_it(data_dir: Path, how: str) -> None:
    public = "https://hooks.example.com/profilehook"
    flags = ["--public-url", public] if how == "flag" else []
    env = {"PROFILEHOOK_PUBLIC_URL": public} if how == "env" else {}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = run_cli(data_dir, *flags, *args, **env)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # nothing to warn about
        return result

    made = json.loads(
        cli(
            "sources",
            "create",
            "copernica",
            "--workspace",
            "acme",
            "--account",
            "1",
            "--token",
            "--json",
        ).stdout
    )
    source_id = made["source_id"]
    rotated = json.loads(cli("sources", "rotate", source_id, "--json").stdout)
    listed = json.loads(cli("sources", "list", "--json").stdout)
    shown = json.loads(cli("sources", "show", source_id).stdout)

    bare = f"{public}/v1/webhooks/{source_id}"
    assert made["url"] == f"{bare}?token={made['token']}"
    assert rotated["url"] == f"{bare}?token={rotated['secret']}"
    assert listed[0]["url"] == shown["url"] == bare


def test_a_worker_says_in_one_line_that_it_started(tmp_path: Path) -> None:
    """Given `profilehook worker`, when it has opened its backends, then it logs one line that
    it applies (an operator's sign of life); SIGTERM then stops it cleanly."""
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "profilehook", "worker"],
            env=cli_env(tmp_path / "data", PROFILEHOOK_LOG_LEVEL="info"),
            stderr=log,
        )
    try:
        wait_until(lambda: "applier started" in log_path.read_text(), timeout_s=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    lines = [line for line in log_path.read_text().splitlines() if "applier started" in line]
    assert len(lines) == 1, lines
    assert "SqliteQueue -> SqliteStore" in lines[0]


def test_a_pinned_key_that_is_not_rsa_is_refused_when_the_source_is_made(tmp_path: Path) -> None:
    """Given a PEM public key of another kind (EC), when a Copernica source would pin it, then
    `sources create` refuses it at once (exit 2, saying why) rather than every call failing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem_file = tmp_path / "ec.pem"
    pem_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    made = run_cli(
        tmp_path / "data",
        *("sources", "create", "copernica", "--workspace", "acme", "--account", ACCOUNT),
        *("--public-key", f"{KEY_ID}={pem_file}", "--json"),
    )
    assert made.returncode == 2, made.stdout
    assert "not an RSA public key" in made.stderr
    assert json.loads(run_cli(tmp_path / "data", "sources", "list", "--json").stdout) == []
