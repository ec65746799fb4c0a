"""The ``profilehook`` command: thin commands over library calls (parse -> settings -> call).

Only this module configures logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from profilehook import constants as c
from profilehook import keys as keys_lib
from profilehook.errors import ProfilehookError, RotationRefused
from profilehook.service import running
from profilehook.settings import MAX_PORT, MIN_PORT, Settings
from profilehook.sources.kinds import KINDS, titles
from profilehook.sources.webhooks import CreateOption, Kind

if TYPE_CHECKING:
    import uvicorn

    from profilehook.api.app import AppliesIn

T = TypeVar("T")
LOCAL_HOSTS = ("localhost", "::1", "0.0.0.0", "::")  # and 127.*: not an address others reach

SEED_EVENT = {
    "contact_id": "user123",
    "event_name": "aampe_property_update",
    "time": 1672531200,
    "event_id": "e3b0c442-98fc-4e4e-a83f-5f7d7edc2f38",
    "user_properties": {"subscription_status": "active", "last_login": 1672531200},
    "metadata": {"platform": "web", "browser": "Chrome"},
}


def _run(coro: Awaitable[T]) -> T:
    """Run a library call; a profilehook error becomes a clear message and exit code 1."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ProfilehookError as exc:
        raise click.ClickException(str(exc.detail)) from None


def _run_until_sigterm(coro: Awaitable[T]) -> T:
    """``_run(coro)``, where SIGTERM cancels ``coro`` at its next ``await`` (its ``finally``
    blocks and context managers run, as for Ctrl-C) and the process then exits 143, as a shell
    reports a terminated command.

    Not ``sys.exit`` in a plain signal handler: that raises wherever the main thread happens to
    be, also inside a library call. Landing in ``ThreadPoolExecutor.submit`` between starting
    its thread and recording it, it left a store's reader thread that ``close`` did not join,
    whose connection was then closed under it: the process died of a segmentation fault."""
    terminated = False

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            nonlocal terminated
            if not terminated:  # cancelled once: a second SIGTERM must not cut the clean-up
                terminated = True
                task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        return await coro

    try:
        return _run(main())
    except asyncio.CancelledError:
        if terminated:
            sys.exit(128 + signal.SIGTERM)
        raise


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    base: Settings = ctx.obj
    try:
        return base.replace(**{k: v for k, v in overrides.items() if v is not None})
    except ProfilehookError as exc:
        raise click.ClickException(str(exc.detail)) from None


PORT = click.IntRange(MIN_PORT, MAX_PORT)


def _nonblank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A workspace name given must name one: an empty or blank name is a usage error."""
    if value is not None and not value.strip():
        raise click.BadParameter("a workspace name cannot be empty or blank")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), help="Overrides PROFILEHOOK_DATA_DIR.")
@click.option("--queue-url", help="Overrides PROFILEHOOK_QUEUE_URL.")
@click.option("--store-url", help="Overrides PROFILEHOOK_STORE_URL.")
@click.option("--log-level", help="Overrides PROFILEHOOK_LOG_LEVEL.")
@click.option(
    "--public-url", help="Overrides PROFILEHOOK_PUBLIC_URL (the base of printed webhook URLs)."
)
@click.pass_context
def main(ctx: click.Context, /, **overrides: Any) -> None:
    """profilehook: real-time user-property updates into always-correct profiles.

    \b
    Example:
      profilehook serve --port 8000
    """
    try:
        ctx.obj = Settings.from_env(os.environ, **overrides)
    except ProfilehookError as exc:
        raise click.ClickException(str(exc.detail)) from None
    logging.basicConfig(
        level=ctx.obj.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--host", help="Address to listen on (PROFILEHOOK_HOST).")
@click.option("--port", type=PORT, help="Port to listen on, 1-65535 (PROFILEHOOK_PORT).")
@click.option("--no-applier", is_flag=True, help="Only ingest; run `profilehook worker` apart.")
@click.option(
    "--quickstart",
    is_flag=True,
    help="Create a first workspace and key if there is none, and print how to send an event.",
)
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, no_applier: bool, quickstart: bool
) -> None:
    """Run the HTTP API (and, by default, the applier) until interrupted.

    \b
    Example:
      profilehook serve --host 0.0.0.0 --port 8000
    """
    import uvicorn

    from profilehook.api.app import create_app
    from profilehook.api.protocol import http_protocol

    settings = _settings(ctx, host=host, port=port)
    _run(_reach_log(settings))
    if quickstart:
        click.echo(_run(_quickstart_text(settings)))
    app = create_app(settings, _applies_in(settings, no_applier))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(settings.header_timeout_s, settings.keep_alive_s),
        lifespan="on",
        access_log=False,
        # profilehook never reads a client's address: rewriting it from X-Forwarded-For on
        # every request (uvicorn's default) would be work for nothing.
        proxy_headers=False,
        log_level=settings.log_level.lower(),
        log_config=None,
    )
    _settle_heap()
    server = _stoppable_server()(config)
    with contextlib.suppress(asyncio.CancelledError):  # stopped during start-up
        server.run()
    if not server.started:
        sys.exit(1)


async def _reach_log(settings: Settings) -> None:
    """Wait for the log's server (NATS), within ``connect_timeout_s``, before uvicorn starts:
    an unreachable one then ends `serve` with one clear message rather than a traceback from
    the app's lifespan. (Signals keep their default meaning here: they stop it at once.)"""
    if not settings.queue_url.startswith(("nats://", "tls://")):
        return  # a local log: nothing to wait for
    from profilehook.queues import open_queue

    queue = open_queue(settings.queue_url, settings.data_dir, settings.connect_timeout_s)
    await queue.open()
    await queue.close()


def _stoppable_server() -> type[uvicorn.Server]:
    import uvicorn

    class StoppableServer(uvicorn.Server):
        """uvicorn, stopped at once by SIGTERM or SIGINT also while its start-up (the app's
        lifespan) still waits for a backend; uvicorn itself would only note the signal."""

        _main: asyncio.Task[None] | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._main = asyncio.current_task()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            main = self._main
            stopping = getattr(self.config.app, "stopping", None)
            if main is not None and stopping is not None:
                main.get_loop().call_soon_threadsafe(stopping)  # open live tails end
            if not self.started and main is not None:
                main.get_loop().call_soon_threadsafe(main.cancel)

    return StoppableServer


def _settle_heap() -> None:
    """Before serving: freeze what start-up allocated (the collector stops rescanning it) and
    collect the young generation every ``GC_YOUNG_THRESHOLD`` allocations instead of 700. Ingest
    allocates thousands of short-lived, acyclic dicts a millisecond, freed by reference
    counting; with the default the collector ran every few requests (~5% of a batch's CPU)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(c.GC_YOUNG_THRESHOLD, 10, 10)


def _applies_in(settings: Settings, no_applier: bool) -> AppliesIn:
    """A child process, unless told not to apply, or unless a backend lives only in memory."""
    if no_applier:
        return "nowhere"
    in_memory = any(url.startswith("memory:") for url in (settings.queue_url, settings.store_url))
    return "task" if in_memory else "process"


def _this_cli(settings: Settings) -> str:
    """This profilehook as a shell command that works as pasted, on these settings' data: by
    absolute path (a checkout's .venv/bin is not on PATH) and with the backends spelled out."""
    script = Path(sys.executable).parent / "profilehook"
    words = [str(script)] if script.is_file() else [sys.executable, "-m", "profilehook"]
    words += ["--data-dir", str(settings.data_dir.resolve())]
    for flag, url in (("--queue-url", settings.queue_url), ("--store-url", settings.store_url)):
        if url:
            words += [flag, url]
    return shlex.join(words)


async def _quickstart_text(settings: Settings) -> str:
    async with running(settings) as services:
        existing = await services.store.list_keys()
        if existing:
            key = "$PROFILEHOOK_KEY"
            intro = (
                "Keys exist already; a key is shown only when it is created. Export yours as\n"
                "PROFILEHOOK_KEY, or create one (from any directory, as printed):\n"
                f"  {_this_cli(settings)} keys create --workspace "
                f"{shlex.quote(existing[0].workspace)}"
            )
        else:
            key, record = await keys_lib.create_key(services.store, c.DEFAULT_WORKSPACE, c.SCOPES)
            intro = (
                f"Created workspace {record.workspace!r} and its first API key "
                f"(shown only now, keep it):\n  {key}"
            )
    url = settings.base_url
    body = json.dumps(SEED_EVENT)
    send = (
        f'curl -sS -X POST {url}/v1/properties -H "Authorization: Bearer {key}"'
        f" -H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    read = f'curl -sS {url}/v1/contacts/user123 -H "Authorization: Bearer {key}"'
    return (
        f"profilehook on {url}, data in {settings.data_dir}\n{intro}\n\n"
        f"Send the first event:\n  {send}\n\nRead the profile:\n  {read}\n"
        f"API docs: {url}/docs\n"
    )


@main.command()
@click.option(
    "--metrics-port",
    type=PORT,
    help="Serve this applier's /metrics (apply lag, applied, duplicates), /healthz and /readyz"
    " (503 when its backends fail or it is stalled) on this port.",
)
@click.option("--report-to-parent", is_flag=True, hidden=True)
@click.option("--wake-fd", type=int, hidden=True)
@click.pass_context
def worker(
    ctx: click.Context, metrics_port: int | None, report_to_parent: bool, wake_fd: int | None
) -> None:
    """Run only the applier (queue -> store) until interrupted.

    \b
    Example:
      PROFILEHOOK_QUEUE_URL=... PROFILEHOOK_STORE_URL=... profilehook worker --metrics-port 9100
    """
    from profilehook.applier_process import run_applier

    settings = _settings(ctx)
    _settle_heap()
    try:
        _run(run_applier(settings, metrics_port, report_to_parent, wake_fd))
    except asyncio.CancelledError:
        sys.exit(1)  # stopped before it started


@main.command(hidden=True)
@click.option("--poll-s", type=float, default=None, hidden=True)
@click.pass_context
def deliver(ctx: click.Context, poll_s: float | None) -> None:
    """Deliver to the destinations until standard input ends (the applier's child process:
    destinations/process.py)."""
    from profilehook.destinations.process import WAKE_POLL_S, run_delivery

    settings = _settings(ctx)
    delivering = run_delivery(settings, WAKE_POLL_S if poll_s is None else poll_s)
    try:
        import uvloop
    except ImportError:
        asyncio.run(delivering)
    else:
        uvloop.run(delivering)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option(
    "--workspace", callback=_nonblank, required=True, help="The workspace the key grants."
)
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(c.SCOPES),
    multiple=True,
    help="What the key may do (repeatable): ingest (send events), read (profiles, events),"
    " admin (everything, management included). Default: ingest and read.",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"key", "key_id", "workspace", "scopes"}.'
)
@click.pass_context
def keys_create(ctx: click.Context, workspace: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key; it is printed once and stored only as a hash.

    \b
    Example:
      profilehook keys create --workspace acme --scope ingest --json
    """
    key, record = _with_services(
        _settings(ctx),
        lambda s: keys_lib.create_key(s.store, workspace, scopes or c.DEFAULT_KEY_SCOPES),
    )
    if as_json:
        click.echo(json.dumps(keys_lib.created_view(key, record)))
    else:
        click.echo(
            f"Key {record.key_id} for workspace {workspace!r}, scopes"
            f" {', '.join(record.scopes)} (shown only now):\n{key}"
        )


@keys.command("list")
@click.option("--workspace", callback=_nonblank, help="Only this workspace's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def keys_list(ctx: click.Context, workspace: str | None, as_json: bool) -> None:
    """List keys (ids, workspaces, dates; never the keys themselves).

    \b
    Example:
      profilehook keys list --workspace acme
    """
    rows = _with_services(_settings(ctx), lambda s: keys_lib.list_keys(s.store, workspace))
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(
            f"{row['key_id']}  {row['workspace']}  {','.join(row['scopes'])}"
            f"  created {row['created_at']}  {state}"
        )


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key; a running server refuses it from the next request on.

    \b
    Example:
      profilehook keys revoke 3f9a0c1d2e4b
    """
    answer = _with_services(_settings(ctx), lambda s: keys_lib.revoke_key(s.store, key_id))
    if answer["already_revoked"]:
        click.echo(f"{key_id} was revoked already, at {answer['revoked_at']}")
    else:
        click.echo(f"Revoked {key_id}")
    if "warning" in answer:
        click.echo(f"Warning: {answer['warning']}", err=True)


@main.group()
def contacts() -> None:
    """Read profiles; erase a contact."""


@contacts.command("get")
@click.argument("contact_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def contacts_get(ctx: click.Context, contact_id: str, workspace: str) -> None:
    """Print a contact's profile as JSON (exit 1 when not found).

    \b
    Example:
      profilehook contacts get user123 --workspace default
    """
    from profilehook.views import contact_view

    settings = _settings(ctx)
    found = _with_services(settings, lambda s: s.store.get_contact(workspace, contact_id))
    if found is None:
        raise click.ClickException("Contact not found")
    click.echo(json.dumps(contact_view(found), indent=2))


@contacts.command("erase")
@click.argument("contact_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.option("--suppress", is_flag=True, help="Also drop every later event of this contact id.")
@click.option("--wait", is_flag=True, help="Carry the erasure out now, and return once it is done.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"erasure_id", "status", "contact_id", "suppress", "requested_at", "completed_at"}.',
)
@click.pass_context
def contacts_erase(
    ctx: click.Context, contact_id: str, workspace: str, suppress: bool, wait: bool, as_json: bool
) -> None:
    """Erase a contact: its profile, history, aliases and events still in the log; its late
    events (event time at or before now) are dropped. A running server or worker carries it out;
    --wait carries it out here. A contact never seen is erased all the same.

    \b
    Example:
      profilehook contacts erase user123 --workspace default --suppress --wait
    """
    from profilehook import erasure as erasure_lib
    from profilehook.views import erasure_view

    async def call(services: Any) -> Any:
        erasure = await erasure_lib.request_erasure(services.store, workspace, contact_id, suppress)
        if wait:
            await erasure_lib.execute(services.queue, services.store, [erasure])
            erasure = await erasure_lib.get_erasure(services.store, workspace, erasure.erasure_id)
        return erasure

    erasure = _with_services(_settings(ctx), call)
    view = erasure_view(erasure)
    if as_json:
        click.echo(json.dumps(view))
    elif erasure.status == "done":
        click.echo(f"Erasure {erasure.erasure_id} of {contact_id!r}: done {view['completed_at']}")
    else:
        click.echo(
            f"Erasure {erasure.erasure_id} of {contact_id!r}: pending (a running server or"
            f" worker carries it out; see profilehook erasures get {erasure.erasure_id}"
            f" --workspace {workspace})"
        )


@contacts.command("unsuppress")
@click.argument("contact_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def contacts_unsuppress(ctx: click.Context, contact_id: str, workspace: str) -> None:
    """Let a suppressed contact's events in again (exit 1 when it is not suppressed).

    \b
    Example:
      profilehook contacts unsuppress user123 --workspace default
    """
    from profilehook import erasure as erasure_lib

    _with_services(_settings(ctx), lambda s: erasure_lib.unsuppress(s.store, workspace, contact_id))
    click.echo(f"{contact_id!r} is no longer suppressed")


@main.group()
def erasures() -> None:
    """Follow erasures."""


@erasures.command("get")
@click.argument("erasure_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def erasures_get(ctx: click.Context, erasure_id: str, workspace: str) -> None:
    """Print an erasure and its status (pending or done) as JSON (exit 1 when not found).

    \b
    Example:
      profilehook erasures get era_0123456789abcdef0123456789abcdef --workspace default
    """
    from profilehook import erasure as erasure_lib
    from profilehook.views import erasure_view

    found = _with_services(
        _settings(ctx), lambda s: erasure_lib.get_erasure(s.store, workspace, erasure_id)
    )
    click.echo(json.dumps(erasure_view(found), indent=2))


@main.group()
def segments() -> None:
    """Create and manage segments: saved filters kept current as events apply."""


@segments.command("create")
@click.option("--workspace", callback=_nonblank, required=True)
@click.option("--name", required=True, help="What to call it.")
@click.option("--filter", "filter_json", required=True, help="The filter, as JSON.")
@click.option("--wait", is_flag=True, help="Fill it from the profiles here, and return once ready.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"segment_id", "name", "filter", "size", "status", "scanned", "created_at"}.',
)
@click.pass_context
def segments_create(
    ctx: click.Context, workspace: str, name: str, filter_json: str, wait: bool, as_json: bool
) -> None:
    """Create a segment. A running server fills it from the profiles there are (--wait: this
    command does), then every apply keeps it current.

    \b
    Example:
      profilehook segments create --workspace default --name Pro \\
        --filter '{"property": "plan", "op": "eq", "value": "pro"}' --json
    """
    from profilehook import segments as segments_lib
    from profilehook.validation import decode_json

    raw, problems = decode_json(filter_json.encode(), ("filter",))
    if problems:
        raise click.ClickException(json.dumps(problems))

    async def call(services: Any) -> Any:
        body = {"name": name, "filter": raw}
        segment = await segments_lib.create(services.store, workspace, body)
        if wait:
            await segments_lib.fill(services.store)
        return await segments_lib.get(services.store, workspace, segment.segment_id)

    segment = _with_services(_settings(ctx), call)
    view = segments_lib.view(segment)
    if as_json:
        click.echo(json.dumps(view))
    else:
        click.echo(
            f"Segment {segment.segment_id} ({name!r}): {segment.status}, {segment.size} members"
        )


@segments.command("list")
@click.option("--workspace", callback=_nonblank, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def segments_list(ctx: click.Context, workspace: str, as_json: bool) -> None:
    """List a workspace's segments with their sizes.

    \b
    Example:
      profilehook segments list --workspace default
    """
    from profilehook import segments as segments_lib

    found = _with_services(
        _settings(ctx), lambda s: segments_lib.of(s.store).list_segments(workspace)
    )
    views = [segments_lib.view(s) for s in found]
    if as_json:
        click.echo(json.dumps(views))
        return
    for v in views:
        click.echo(f"{v['segment_id']}  {v['status']:8}  {v['size']:>8}  {v['name']}")


@segments.command("show")
@click.argument("segment_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def segments_show(ctx: click.Context, segment_id: str, workspace: str) -> None:
    """Print a segment (size, status, the backfill's progress) as JSON (exit 1 when not found).

    \b
    Example:
      profilehook segments show seg_0123456789abcdef0123456789abcdef --workspace default
    """
    from profilehook import segments as segments_lib

    found = _with_services(
        _settings(ctx), lambda s: segments_lib.get(s.store, workspace, segment_id)
    )
    click.echo(json.dumps(segments_lib.view(found), indent=2))


@segments.command("delete")
@click.argument("segment_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def segments_delete(ctx: click.Context, segment_id: str, workspace: str) -> None:
    """Delete a segment and its members (exit 1 when not found).

    \b
    Example:
      profilehook segments delete seg_0123456789abcdef0123456789abcdef --workspace default
    """
    from profilehook import segments as segments_lib

    _with_services(_settings(ctx), lambda s: segments_lib.delete(s.store, workspace, segment_id))
    click.echo(f"Segment {segment_id} deleted")


@main.group()
def destinations() -> None:
    """Create and manage webhook destinations: where changes are pushed, signed."""


@destinations.command("create")
@click.option("--workspace", callback=_nonblank, required=True)
@click.option("--url", required=True, help="https URL that receives the changes.")
@click.option("--property", "properties", multiple=True, help="Only changes of this property.")
@click.option("--segment", "segment_ids", multiple=True, help="Or entries/exits of this segment.")
@click.option("--description", default="", help="What it is for.")
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"destination_id", "secret", …} as JSON.'
)
@click.pass_context
def destinations_create(
    ctx: click.Context,
    workspace: str,
    url: str,
    properties: tuple[str, ...],
    segment_ids: tuple[str, ...],
    description: str,
    as_json: bool,
) -> None:
    """Create a destination; its signing secret is printed once (exit 1 when refused).

    \b
    Example:
      profilehook destinations create --workspace default \\
        --url https://hooks.example.com/profiles --property plan --json
    """
    from profilehook.destinations import registry

    settings = _settings(ctx)
    body: dict[str, Any] = {"url": url, "description": description}
    if properties:
        body["properties"] = list(properties)
    if segment_ids:
        body["segments"] = list(segment_ids)
    made, secret = _with_services(
        settings,
        lambda s: registry.create(
            s.store, workspace, body, allow_private=settings.destinations_allow_private
        ),
    )
    if as_json:
        click.echo(json.dumps({**registry.view(made), "secret": secret}))
    else:
        click.echo(f"Destination {made.destination_id} -> {made.url}")
        click.echo(f"Secret (shown once): {secret}")


@destinations.command("list")
@click.option("--workspace", callback=_nonblank, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def destinations_list(ctx: click.Context, workspace: str, as_json: bool) -> None:
    """List a workspace's destinations.

    \b
    Example:
      profilehook destinations list --workspace default
    """
    from profilehook.destinations import registry

    found = _with_services(_settings(ctx), lambda s: s.store.list_destinations(workspace))
    views = [registry.view(d) for d in found]
    if as_json:
        click.echo(json.dumps(views))
        return
    for v in views:
        click.echo(f"{v['destination_id']}  {v['status']:8}  {v['url']}")


@destinations.command("show")
@click.argument("destination_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def destinations_show(ctx: click.Context, destination_id: str, workspace: str) -> None:
    """Print a destination as JSON (exit 1 when not found).

    \b
    Example:
      profilehook destinations show dst_0123456789abcdef0123456789abcdef --workspace default
    """
    from profilehook.destinations import registry

    found = _with_services(
        _settings(ctx), lambda s: registry.get(s.store, workspace, destination_id)
    )
    click.echo(json.dumps(registry.view(found), indent=2))


@destinations.command("delete")
@click.argument("destination_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def destinations_delete(ctx: click.Context, destination_id: str, workspace: str) -> None:
    """Stop and forget a destination (exit 1 when not found).

    \b
    Example:
      profilehook destinations delete dst_0123456789abcdef0123456789abcdef --workspace default
    """
    from profilehook.destinations import registry

    _with_services(_settings(ctx), lambda s: registry.delete(s.store, workspace, destination_id))
    click.echo(f"Destination {destination_id} deleted")


@main.group()
def events() -> None:
    """Read events."""


@events.command("get")
@click.argument("event_id")
@click.option("--workspace", callback=_nonblank, required=True)
@click.pass_context
def events_get(ctx: click.Context, event_id: str, workspace: str) -> None:
    """Print an event and its status as JSON (exit 1 when not found).

    \b
    Example:
      profilehook events get e3b0c442-98fc-4e4e-a83f-5f7d7edc2f38 --workspace default
    """
    from profilehook.views import event_status

    settings = _settings(ctx)
    found = _with_services(settings, lambda s: event_status(s.queue, s.store, workspace, event_id))
    if found is None:
        raise click.ClickException("Event not found")
    click.echo(json.dumps(found, indent=2))


@main.command()
@click.pass_context
def rebuild(ctx: click.Context) -> None:
    """Recompute every profile from the event history, with a progress bar (history that
    retention purged is replayed from its snapshots).

    \b
    Example:
      profilehook rebuild
    """
    from rich.progress import Progress

    settings = _settings(ctx)

    async def run() -> int:
        async with running(settings) as services:
            with Progress(transient=True) as bar:
                task = bar.add_task("Replaying events", total=None)
                return await services.store.rebuild(
                    lambda done, total: bar.update(task, completed=done, total=total)
                )

    count = _run(run())
    click.echo(f"Rebuilt profiles from {count} events")


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--workspace", callback=_nonblank, required=True, help="The workspace the events belong to."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"accepted", "rejected", "problems"}.')
@click.pass_context
def import_cmd(ctx: click.Context, file: Path, workspace: str, as_json: bool) -> None:
    """Backfill a JSONL file (one POST /v1/properties body a line) into the durable log.

    Lines are checked alone; valid ones are stored and applied by event time (a historical
    import never overwrites newer values), invalid ones reported. Exit code 1 if any was.

    \b
    Example:
      profilehook import history.jsonl --workspace acme
    """
    from rich.progress import Progress

    from profilehook.backfill import import_jsonl

    async def run() -> Any:
        async with running(_settings(ctx)) as services:
            with Progress(transient=True, disable=as_json) as bar:
                task = bar.add_task(f"Importing {file.name}", total=file.stat().st_size)
                return await import_jsonl(
                    services.queue,
                    file,
                    workspace,
                    lambda done, total: bar.update(task, completed=done, total=total),
                    oldest_accepted_us=services.settings.oldest_accepted_us,
                )

    result = _run(run())
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result)))
    else:
        click.echo(f"Imported {result.accepted} events; {result.rejected} lines refused")
        for refused in result.problems[:10]:
            first = refused["detail"][0]
            click.echo(f"  line {refused['line']}: {first['msg']} at {first['loc'][2:]}")
    if result.rejected:
        sys.exit(1)


@main.command("export")
@click.option(
    "--workspace", callback=_nonblank, required=True, help="The workspace whose profiles to write."
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="The JSONL file to write; - for standard output.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='When done, print {"workspace", "contacts", "output"} (needs --output FILE).',
)
@click.pass_context
def export_cmd(ctx: click.Context, workspace: str, output: Path, as_json: bool) -> None:
    """Write every profile of a workspace as JSONL: one GET /v1/contacts/{id} answer a line.

    Deleted contacts are left out; the order is the store's, by contact id. The service may
    keep running: each line is a contact as it was when read, and one applied meanwhile may or
    may not be written. A file is written whole or not at all (into a temporary file beside
    it, renamed when complete) and keeps its permissions.

    \b
    Example:
      profilehook export --workspace acme --output profiles.jsonl
    """
    from rich.console import Console
    from rich.progress import Progress

    from profilehook.export import export_jsonl, whole_file
    from profilehook.stores import open_store

    settings = _settings(ctx)
    to_stdout = str(output) == "-"
    if as_json and to_stdout:
        raise click.UsageError("--json prints a summary on standard output: give --output FILE")

    async def run() -> int:
        store = open_store(settings.store_url, settings.data_dir)  # the log is not needed
        await store.open()
        try:
            destination = (
                contextlib.nullcontext(sys.stdout.buffer) if to_stdout else whole_file(output)
            )
            with (
                destination as out,
                Progress(console=Console(stderr=True), transient=True, disable=as_json) as bar,
            ):
                task = bar.add_task(f"Exporting {workspace}", total=None)
                return await export_jsonl(
                    store,
                    workspace,
                    out,
                    lambda done, total: bar.update(task, completed=done, total=total),
                )
        finally:
            await store.close()

    # SIGTERM unwinds like Ctrl-C, so that a stopped export leaves no temporary file behind.
    count = _run_until_sigterm(run())
    if count == 0:
        click.echo(f"No contacts in workspace {workspace!r}", err=True)
    if as_json:
        click.echo(json.dumps({"workspace": workspace, "contacts": count, "output": str(output)}))
    elif not to_stdout:
        click.echo(f"Exported {count} contacts of {workspace!r} to {output}")


@main.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the settings and that the log and the store answer.

    \b
    Example:
      PROFILEHOOK_STORE_URL=... profilehook check
    """
    settings = _settings(ctx)

    async def probe() -> int:
        async with running(settings) as services:
            await services.store.ping()
            await services.queue.ping()
            return await services.queue.depth()

    depth = _run(probe())
    click.echo(f"ok: log and store answer; {depth} events waiting to be applied")


@main.group()
def streams() -> None:
    """Manage the NATS JetStream stream of the log (the scaled-out configuration)."""


@streams.command("set-replicas")
@click.argument("replicas", type=click.IntRange(1, 5))
@click.pass_context
def streams_set_replicas(ctx: click.Context, replicas: int) -> None:
    """Give the stream REPLICAS copies (processes never change them by themselves).

    Then name the same count in PROFILEHOOK_QUEUE_URL (replicas=N), or leave replicas= out.

    \b
    Example:
      PROFILEHOOK_QUEUE_URL='nats://nats-1:4222?stream=PROFILEHOOK_EVENTS' \\
          profilehook streams set-replicas 3
    """
    settings = _settings(ctx)
    if not settings.queue_url.startswith(("nats://", "tls://")):
        raise click.ClickException("PROFILEHOOK_QUEUE_URL names no NATS server (nats://...)")
    from profilehook.queues.nats import set_stream_replicas

    before = _run(set_stream_replicas(settings.queue_url, replicas, settings.connect_timeout_s))
    click.echo(f"Stream replicas: {before} -> {replicas}")


@main.command("settings")
@click.pass_context
def settings_cmd(ctx: click.Context) -> None:
    """List every setting: its environment variable, current value and meaning.

    \b
    Example:
      PROFILEHOOK_PORT=9000 profilehook settings
    """
    for name, value, help_text in _settings(ctx).describe():
        click.echo(f"{name}={value}\n    {help_text}")


def _with_services(settings: Settings, call: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        async with running(settings) as services:
            return await call(services)

    return _run(run())


@main.group(help=f"Create and manage webhook sources ({titles()}).")
def sources() -> None:
    pass


@sources.group("create")
def sources_create() -> None:
    """Create a webhook source; prints its URL (and its secret, once).

    \b
    Example:
      profilehook sources create amplitude --workspace acme --json
    """


def _create_command(kind: Kind) -> click.Command:
    """``sources create <kind>``, with the options the kind declares."""

    @click.pass_context
    def create(ctx: click.Context, /, workspace: str, as_json: bool, **values: Any) -> None:
        for option in kind.options:
            if option.parse is not None:
                values[option.key] = _parsed(option, values[option.key])
        _create_source(ctx, kind, workspace, values, as_json)

    params: list[click.Parameter] = [
        click.Option(["--workspace"], callback=_nonblank, required=True),
        *(_click_option(option) for option in kind.options),
        click.Option(["--json", "as_json"], is_flag=True, help=kind.json_help),
    ]
    return click.Command(kind.name, callback=create, params=params, help=kind.create_help)


def _click_option(option: CreateOption) -> click.Option:
    return click.Option(
        [option.flag, option.key],
        required=option.required,
        is_flag=option.is_flag,
        multiple=option.multiple,
        metavar=option.metavar,
        help=option.help,
    )


def _parsed(option: CreateOption, value: Any) -> Any:
    """The option's value(s) through its ``parse``; a ``ValueError`` is a bad parameter."""
    assert option.parse is not None
    try:
        if option.multiple:
            return tuple(option.parse(item) for item in value)
        return None if value is None else option.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option.flag) from None


def _create_source(
    ctx: click.Context, kind: Kind, workspace: str, values: dict[str, Any], as_json: bool
) -> None:
    from profilehook.sources import management

    settings = _settings(ctx)
    out = _with_services(
        settings,
        lambda s: management.create(s.store, settings.base_url, kind, workspace, values),
    )
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"Created {kind.name} source {out['source_id']} for workspace {workspace!r}.")
        click.echo(f"Webhook URL: {out['url']}")
        if kind.secret_in == "header":
            secret = out["secret"]
            click.echo(f"In {kind.title}, add this custom header to the webhook (shown only now):")
            click.echo(f"  Authorization: Bearer {secret}")
            click.echo(f"  (or X-Api-Key: {secret})")
    missing = kind.missing_extra()
    if missing is not None:  # on standard error: stdout may be --json
        click.echo(f"Note: this installation cannot take its calls yet: {missing.detail}", err=True)
    _public_url_note(settings)


for _kind in KINDS.values():
    sources_create.add_command(_create_command(_kind))


@sources.command("list")
@click.option("--workspace", callback=_nonblank, help="Only this workspace's sources.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def sources_list(ctx: click.Context, workspace: str | None, as_json: bool) -> None:
    """List sources with their URLs (never their secrets).

    \b
    Example:
      profilehook sources list --workspace acme
    """
    from profilehook.sources import management

    settings = _settings(ctx)
    views = _with_services(
        settings, lambda s: management.list_views(s.store, settings.base_url, workspace)
    )
    if as_json:
        click.echo(json.dumps(views))
        return
    for view in views:
        click.echo(f"{view['source_id']}  {view['kind']:<9}  {view['workspace']}  {view['url']}")


@sources.command("show")
@click.argument("source_id")
@click.pass_context
def sources_show(ctx: click.Context, source_id: str) -> None:
    """Print a source as JSON: URL, options, how many secrets are active.

    \b
    Example:
      profilehook sources show src_0123456789abcdef
    """
    from profilehook.sources import management

    settings = _settings(ctx)
    view = _with_services(
        settings, lambda s: management.show(s.store, settings.base_url, source_id)
    )
    click.echo(json.dumps(view, indent=2))


@sources.command("delete")
@click.argument("source_id")
@click.option("--json", "as_json", is_flag=True, help="Print the deleted source as JSON.")
@click.pass_context
def sources_delete(ctx: click.Context, source_id: str, as_json: bool) -> None:
    """Delete a source: its webhook calls are refused (404) from the next one on. Switch the
    sender's webhook off first.

    \b
    Example:
      profilehook sources delete src_0123456789abcdef
    """
    from profilehook.sources import management

    settings = _settings(ctx)
    view = _with_services(
        settings, lambda s: management.delete(s.store, settings.base_url, source_id)
    )
    if as_json:
        click.echo(json.dumps(view))
    else:
        click.echo(f"Deleted {view['kind']} source {source_id} of workspace {view['workspace']!r}")


@sources.command("rotate")
@click.argument("source_id")
@click.option(
    "--drop-previous",
    is_flag=True,
    help="Finish a rotation: only the newest secret keeps working.",
)
@click.option(
    "--revoke-oldest",
    is_flag=True,
    help="Rotate although two secrets are active: the older of them stops working now.",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"source_id", "secret", "url"}.')
@click.pass_context
def sources_rotate(
    ctx: click.Context, source_id: str, drop_previous: bool, revoke_oldest: bool, as_json: bool
) -> None:
    """Issue a new secret (Amplitude) or token (Copernica); the previous one works until
    --drop-previous. A Copernica source without a token has nothing to rotate: refused.

    \b
    Example:
      profilehook sources rotate src_0123456789abcdef
      profilehook sources rotate src_0123456789abcdef --drop-previous
    """
    from profilehook.sources import management

    settings = _settings(ctx)
    base_url = settings.base_url
    if drop_previous:
        _rotation(
            lambda s: management.drop_previous(s.store, base_url, source_id), settings, source_id
        )
        click.echo(f"Only the newest secret of {source_id} works now")
        return
    out = _rotation(
        lambda s: management.rotate(s.store, base_url, source_id, revoke_oldest=revoke_oldest),
        settings,
        source_id,
    )
    in_query = "?token=" in out["url"]
    if as_json:
        click.echo(json.dumps(out))
    elif in_query:
        click.echo(f"New token of {source_id} (shown only now). Set the webhook URL to:")
        click.echo(f"  {out['url']}")
        click.echo("The previous URL keeps working until --drop-previous.")
    else:
        click.echo(f"New secret of {source_id} (shown only now; the previous one still works):")
        click.echo(f"  {out['secret']}")
    _public_url_note(settings)


def _rotation(call: Callable[[Any], Awaitable[T]], settings: Settings, source_id: str) -> T:
    """Run a rotation; a refusal also says which command does what was meant."""
    hints = {
        "rotation_under_way": f" Run `profilehook sources rotate {source_id} --drop-previous`"
        " first, or rotate with --revoke-oldest.",
    }

    async def explained(services: Any) -> T:
        try:
            return await call(services)
        except RotationRefused as exc:
            raise RotationRefused(exc.reason, f"{exc.detail}{hints.get(exc.reason, '')}") from None

    return _with_services(settings, explained)


def _public_url_note(settings: Settings) -> None:
    """On standard error (stdout may be --json): a URL built from host and port is a guess."""
    if settings.public_url:
        return
    local = settings.host in LOCAL_HOSTS or settings.host.startswith("127.")
    reach = (
        f" Copernica and Amplitude cannot reach {settings.host}: it is local to this machine."
        if local
        else ""
    )
    click.echo(
        f"Note: this URL is built from PROFILEHOOK_HOST and PROFILEHOOK_PORT ({settings.base_url}),"
        f" not from where your server listens.{reach} Set PROFILEHOOK_PUBLIC_URL (or"
        " --public-url before the command) to the address they reach profilehook at, e.g."
        " PROFILEHOOK_PUBLIC_URL=https://hooks.example.com; `profilehook sources list` then"
        " prints the right URLs.",
        err=True,
    )
