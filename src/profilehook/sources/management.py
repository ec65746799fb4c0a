"""The actions on a workspace's webhook sources, one function each, behind both ``profilehook
sources …`` and the management API (``/v1/sources``): create (from the options a kind
declares, given on the command line or as JSON), list, show, rotate, drop the previous secret,
delete. Each answers with the JSON form the CLI prints with ``--json``.

``workspace``, when given, is the only one the caller may touch (an admin key's): another
workspace's source is not found, exactly as a source that does not exist.
"""

from __future__ import annotations

from typing import Any

from profilehook.errors import NotFound, ValidationFailed
from profilehook.sources import registry
from profilehook.sources.kinds import KINDS
from profilehook.sources.webhooks import CreateOption, Kind
from profilehook.stores.base import Catalog, Source
from profilehook.validation import (
    Problem,
    missing,
    problem,
    same_workspace,
    string_type,
    value_error,
)

BODY = "body"


def default_values(kind: Kind) -> dict[str, Any]:
    """Every option of ``kind`` at its value when not given."""
    return {
        option.key: False if option.is_flag else () if option.multiple else None
        for option in kind.options
    }


def values_from_json(body: Any, workspace: str) -> tuple[Kind, dict[str, Any]]:
    """``{"kind": ..., <the kind's options by name>}`` -> the kind and its option values, as
    the CLI's options give them. ``workspace``, when the body names one, must be it. Raises
    ``ValidationFailed`` listing every problem (unknown kind or field, a value of the wrong
    type, a required option missing, a value its option refuses)."""
    if not isinstance(body, dict):
        raise ValidationFailed(
            [problem("dict_type", (BODY,), "Input should be a valid dictionary", body)]
        )
    problems: list[Problem] = []
    name = body.get("kind")
    kind = KINDS.get(name) if isinstance(name, str) else None
    if name is None:
        problems.append(missing((BODY, "kind"), body))
    elif kind is None:
        expected = " or ".join(repr(k) for k in KINDS)
        problems.append(
            problem(
                "enum", (BODY, "kind"), f"Input should be {expected}", name, {"expected": expected}
            )
        )
    same_workspace(body, workspace, problems)
    if kind is None:
        raise ValidationFailed(problems)
    options = {option.key: option for option in kind.options}
    values = default_values(kind)
    for field, value in body.items():
        if field in ("kind", "workspace"):
            continue
        option = options.get(field)
        if option is None:
            problems.append(
                problem("extra_forbidden", (BODY, field), "Extra inputs are not permitted", value)
            )
            continue
        values[field] = _json_value(option, value, (BODY, field), problems)
    for option in kind.options:
        if option.required and option.key not in body:
            problems.append(missing((BODY, option.key), body))
    if problems:
        raise ValidationFailed(problems)
    return kind, values


def _json_value(
    option: CreateOption, value: Any, loc: tuple[str, ...], problems: list[Problem]
) -> Any:
    if option.is_flag:
        if not isinstance(value, bool):
            problems.append(problem("bool_type", loc, "Input should be a valid boolean", value))
        return bool(value)
    if option.from_json is not None:
        try:
            return option.from_json(value)
        except ValueError as exc:
            problems.append(value_error(loc, value, str(exc)))
            return None
    if option.parse is not None:
        problems.append(value_error(loc, value, f"{option.flag} is set from the command line only"))
        return None
    if option.multiple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(problem("list_type", loc, "Input should be a list of strings", value))
            return ()
        return tuple(value)
    if not isinstance(value, str):
        problems.append(string_type(loc, value))
    elif not value:
        problems.append(
            problem(
                "string_too_short",
                loc,
                "String should have at least 1 character",
                value,
                {"min_length": 1},
            )
        )
    return value


async def create(
    store: Catalog, base_url: str, kind: Kind, workspace: str, values: dict[str, Any]
) -> dict[str, Any]:
    """Create a source of ``kind`` from its option values; its JSON form (`sources create
    <kind> --json`): ``{"source_id", "url", "kind", "workspace"}``, with ``"secret"`` (header
    kinds) or ``"token"`` (and the URL carrying it), shown only now."""
    config, with_secret = kind.config(values)
    source, secret = await registry.create_source(store, kind.name, workspace, config, with_secret)
    url = registry.webhook_url(base_url, source)
    out: dict[str, Any] = {
        "source_id": source.source_id,
        "url": url,
        "kind": kind.name,
        "workspace": workspace,
    }
    if kind.secret_in == "header":
        out["secret"] = secret
    elif secret is not None:
        out["token"] = secret
        out["url"] = f"{url}?token={secret}"
    return out


async def list_views(store: Catalog, base_url: str, workspace: str | None) -> list[dict[str, Any]]:
    """The sources (of ``workspace``, or all) as `sources list --json` prints them."""
    return [registry.public_view(s, base_url) for s in await store.list_sources(workspace)]


async def show(
    store: Catalog, base_url: str, source_id: str, workspace: str | None = None
) -> dict[str, Any]:
    """One source as `sources show` prints it. Raises ``NotFound``."""
    return registry.public_view(await existing(store, source_id, workspace), base_url)


async def rotate(
    store: Catalog,
    base_url: str,
    source_id: str,
    workspace: str | None = None,
    *,
    revoke_oldest: bool = False,
) -> dict[str, Any]:
    """A new secret (see ``registry.rotate_secret``); `sources rotate --json`'s form:
    ``{"source_id", "secret", "url"}``, the URL carrying it for a ``?token=`` kind. Raises
    ``NotFound``, ``RotationRefused``."""
    await existing(store, source_id, workspace)
    source, secret = await registry.rotate_secret(store, source_id, revoke_oldest=revoke_oldest)
    url = registry.webhook_url(base_url, source)
    if KINDS[source.kind].secret_in == "query":
        url = f"{url}?token={secret}"
    return {"source_id": source_id, "secret": secret, "url": url}


async def drop_previous(
    store: Catalog, base_url: str, source_id: str, workspace: str | None = None
) -> dict[str, Any]:
    """Keep only the newest secret; the source as `sources show` prints it. Raises
    ``NotFound``, ``RotationRefused``."""
    await existing(store, source_id, workspace)
    return registry.public_view(await registry.drop_previous_secret(store, source_id), base_url)


async def delete(
    store: Catalog, base_url: str, source_id: str, workspace: str | None = None
) -> dict[str, Any]:
    """Delete a source: its webhook calls are answered 404 from the next one on (its senders
    should be switched off first). The deleted source as `sources show` printed it, with
    ``"deleted": true``. Raises ``NotFound`` (also when deleted already)."""
    source = await existing(store, source_id, workspace)
    if not await store.delete_source(source_id):
        raise NotFound(f"No source with id {source_id!r}")  # deleted meanwhile
    return {**registry.public_view(source, base_url), "deleted": True}


async def existing(store: Catalog, source_id: str, workspace: str | None) -> Source:
    """The source, when it exists (in ``workspace``, when given). Raises ``NotFound``."""
    source = await store.get_source(source_id)
    if source is None or workspace not in (None, source.workspace):
        raise NotFound(f"No source with id {source_id!r}")
    return source
