"""Copernica (sub)profile webhooks (README, Copernica (sub)profiles): a signed PHP-bracket form -> property updates.

Checks, in this order; a refusal stores nothing, and a refused token or signature is logged:

1. ``?token=`` when the source has one (``sources create copernica --token``) -> 401;
2. Copernica's HTTP signature, ``Date`` within ±300 s, ``X-Copernica-ID`` equal to the source's
   account -> 401 naming the check (``copernica_signature``; the source's pinned keys, else the
   DNS key, looked up off the loop); then ``(Digest, X-Nonce)`` not seen by any process on the
   store in that window (``Store.remember_nonce``; forgotten again when the call is refused
   after all, so the sender's retry is not a replay) -> 401 ``replayed``;
3. ``Content-Type: application/x-www-form-urlencoded`` -> else 415; the form (``forms``) ->
   413 over its limits, 422 not UTF-8;
4. the fields the mapping needs -> 422 listing every problem, FastAPI style.

Mapping:

* The type is ``type``, else ``action``, case-insensitive. ``create``/``update``/``delete`` with a
  ``subprofile`` is a subprofile event, without one a profile event; any other type (the e-mail
  events: open, click, error, unsubscribe, ...) is answered 200 and counted as ignored.
* Profile create/update: properties = ``fields`` (the full current state) and ``interests``, the
  sorted active names whatever the wire shape: ``interests[]=a``, ``interests[0]=a``,
  ``interests[a]=1|0``, grouped ``interests[g][]=a`` or ``interests[g][a]=1``. An integer key holds
  a name (a PHP list), any other key is a name and its value a flag; a group's name is not part of
  its interests' names, so every shape gives the same list. No ``interests`` at all is none
  (``http_build_query`` leaves empty arrays out). The list replaces a field named ``interests``.
* Profile delete: the contact is deleted as of the event time (an older update cannot bring it
  back: the store's rule). Subprofile create/update: ``subprofiles.<collection>.<subprofile>`` =
  its ``fields`` on the parent profile's contact; subprofile delete: that property = None.
* Event time: ``time`` (Unix seconds); without it ``timestamp``, ``modified`` or ``created``
  (``YYYY-MM-DD HH:MM:SS``, Europe/Amsterdam wall time; the earlier of an ambiguous hour).
* event_id ``cp<rank>-<digest of source id and raw body>``: a re-delivery is a duplicate.
  Copernica's times are whole seconds; the rank (create 0, update 1, delete 2) makes a delete win
  over an update of the same second, and an update over a create.

Contact ids: the profile id; or, with the source's ``contact_field``, that field's value. A profile
event that carries a value names its contact, and the source durably remembers profile id ->
contact (``Store.put_alias``, before answering; the greatest version wins). Every other event of the
profile (subprofile events; profile events whose field is empty) goes to the remembered contact.
When there is none yet (the profile has not changed since the webhook was set up, or its subprofile
event overtook it), the event is *parked*: stored durably, answered 200 with its event_id, and
published to the contact as soon as an event of that profile brings the field. So nothing lands on a
wrong contact, nothing is dropped, and arrival order does not matter. Not chosen: 503 + Retry-After
(Copernica stops retrying after a while, and a profile that never changes never resolves), nor
falling back to the profile id (one customer split over two contacts for good).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from profilehook import constants as c
from profilehook.errors import (
    ConfigurationError,
    ProfilehookError,
    SignatureRejected,
    StorageUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from profilehook.events import Event
from profilehook.settings import Settings
from profilehook.sources.copernica_signature import (
    DnsKeys,
    KeyResolver,
    PinnedKeys,
    SignedRequest,
    load_public_key,
    verify_request,
)
from profilehook.sources.forms import decode_form, php_key
from profilehook.sources.registry import secret_matches
from profilehook.sources.webhooks import (
    CreateOption,
    Kind,
    OldestAccepted,
    Released,
    WebhookRequest,
    WebhookResult,
    within_retention,
)
from profilehook.stores.base import AliasUpdate, Nonce, Source, Store
from profilehook.validation import (
    Loc,
    Problem,
    dict_type,
    fits_bytes,
    missing,
    string_type,
    too_long,
    too_short,
    unstorable,
    value_error,
)

log = logging.getLogger(__name__)

SOURCE = "copernica"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
Action = Literal["create", "update", "delete"]
ACTION_RANK: dict[str, int] = {"create": 0, "update": 1, "delete": 2}
LOCAL_TIME_FIELDS = ("timestamp", "modified", "created")
ACTIVE_FLAGS = frozenset({"1", "true", "yes", "on"})
INACTIVE_FLAGS = frozenset({"0", "false", "no", "off", ""})
_UNIX_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

try:
    AMSTERDAM = ZoneInfo("Europe/Amsterdam")
except ZoneInfoNotFoundError:
    raise ImportError("no time zone data for Europe/Amsterdam: pip install tzdata") from None


# -- the mapping: a decoded form -> a notice -> an event -------------------------------------


@dataclass(frozen=True)
class Notice:
    """One (sub)profile webhook call, as read from its form. ``contact`` is the value of the
    source's contact field on a profile event, when it has one."""

    action: Action
    profile_id: str
    ts_us: int
    fields: dict[str, Any] = field(default_factory=dict)
    interests: list[str] = field(default_factory=list)
    collection: str | None = None
    subprofile: str | None = None
    database: str | None = None
    contact: str | None = None

    @property
    def entity(self) -> str:
        return "profile" if self.subprofile is None else "subprofile"

    def properties(self) -> dict[str, Any]:
        if self.subprofile is not None:
            name = subprofile_property(self.collection or "", self.subprofile)
            return {name: None if self.action == "delete" else self.fields}
        if self.action == "delete":
            return {}
        return {**self.fields, "interests": self.interests}

    def metadata(self, source_id: str) -> dict[str, Any]:
        found = {
            "source_id": source_id,
            "profile": self.profile_id,
            "database": self.database,
            "collection": self.collection,
            "subprofile": self.subprofile,
        }
        return {name: value for name, value in found.items() if value is not None}


def subprofile_property(collection: str, subprofile: str) -> str:
    return f"subprofiles.{collection}.{subprofile}"


def read_notice(form: Mapping[str, Any], contact_field: str | None = None) -> Notice | None:
    """The (sub)profile event a decoded form describes; None for any other type (ignored).

    Raises ``ValidationFailed`` (422) listing every missing or garbled field.
    """
    problems: list[Problem] = []
    action = event_type(form, problems)
    if not problems and action not in ACTION_RANK:
        return None
    profile_id = _required_id(form, "profile", problems)
    collection, subprofile = _subprofile_of(form, problems)
    ts_us = event_time_us(form, problems)
    fields = _fields(form, problems)
    is_profile = subprofile is None
    notice = Notice(
        cast(Action, action),  # one of ACTION_RANK's keys, checked above
        profile_id,
        ts_us,
        fields,
        interests=active_interests(form.get("interests"), problems) if is_profile else [],
        collection=collection,
        subprofile=subprofile,
        database=form["database"] if isinstance(form.get("database"), str) else None,
        contact=_named_contact(fields, contact_field, problems) if is_profile else None,
    )
    if problems:
        raise ValidationFailed(problems)
    return notice


def _subprofile_of(
    form: Mapping[str, Any], problems: list[Problem]
) -> tuple[str | None, str | None]:
    """(collection, subprofile) of a subprofile event; (None, None) for a profile event."""
    if "subprofile" not in form:
        return None, None
    subprofile = _required_id(form, "subprofile", problems)
    collection = _required_id(form, "collection", problems)
    _check_name(subprofile_property(collection, subprofile), ("body", "subprofile"), problems)
    return collection, subprofile


def event_type(form: Mapping[str, Any], problems: list[Problem]) -> str:
    """``type``, falling back to ``action``, lower-cased; ``""`` after recording a problem."""
    for name in ("type", "action"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
        if value is not None and not isinstance(value, str):
            problems.append(string_type(("body", name), value))
            return ""
    problems.append(missing(("body", "type"), dict(form)))
    return ""


def event_time_us(form: Mapping[str, Any], problems: list[Problem]) -> int:
    """``time`` (Unix seconds), else the first of ``timestamp``/``modified``/``created`` read as
    Europe/Amsterdam wall time; 0 after recording a problem."""
    if "time" in form:
        return _unix_time_us(form["time"], ("body", "time"), problems)
    for name in LOCAL_TIME_FIELDS:
        if name in form:
            return _local_time_us(form[name], ("body", name), problems)
    problems.append(missing(("body", "time"), dict(form)))
    return 0


def _unix_time_us(value: Any, loc: Loc, problems: list[Problem]) -> int:
    if not isinstance(value, str):
        problems.append(string_type(loc, value))
        return 0
    if not _UNIX_SECONDS.fullmatch(value.strip()):
        problems.append(value_error(loc, value, "time must be Unix seconds"))
        return 0
    return _bounded_us(int(Decimal(value.strip()) * 1_000_000), loc, value, problems)


def _local_time_us(value: Any, loc: Loc, problems: list[Problem]) -> int:
    if not isinstance(value, str):
        problems.append(string_type(loc, value))
        return 0
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        problems.append(value_error(loc, value, "expected YYYY-MM-DD HH:MM:SS"))
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=AMSTERDAM)
    return _bounded_us((moment - _EPOCH) // timedelta(microseconds=1), loc, value, problems)


def _bounded_us(ts_us: int, loc: Loc, value: str, problems: list[Problem]) -> int:
    if not 0 <= ts_us <= c.MAX_EVENT_TIME_S * 1_000_000:
        problems.append(value_error(loc, value, "time must fall between 1970 and 9999"))
        return 0
    return ts_us


def active_interests(value: Any, problems: list[Problem]) -> list[str]:
    """The sorted, distinct active interest names of any wire shape (see the module docstring)."""
    names: set[str] = set()
    _collect_interests(value, ("body", "interests"), names, problems)
    return sorted(names)


def _collect_interests(value: Any, loc: Loc, names: set[str], problems: list[Problem]) -> None:
    if isinstance(value, str):
        names.update([value] if value else [])
        return
    items: Any = enumerate(value) if isinstance(value, list) else (value or {}).items()
    for key, item in items:
        here = (*loc, key)
        if isinstance(item, dict | list):
            _collect_interests(item, here, names, problems)  # a group
        elif isinstance(php_key(str(key)), int):
            names.update([item] if item else [])  # a list item: the name itself
        elif item.strip().lower() in ACTIVE_FLAGS:
            names.add(key)
        elif item.strip().lower() not in INACTIVE_FLAGS:
            problems.append(value_error(here, item, "an interest flag is 1 or 0"))


def _required_id(form: Mapping[str, Any], name: str, problems: list[Problem]) -> str:
    loc = ("body", name)
    value = form.get(name)
    if value is None:
        problems.append(missing(loc, dict(form)))
    elif not isinstance(value, str):
        problems.append(string_type(loc, value))
    elif not value.strip():
        problems.append(too_short(loc, value))
    elif len(value) > c.MAX_CONTACT_ID_CHARS:
        problems.append(too_long(loc, value, c.MAX_CONTACT_ID_CHARS))
    else:
        return fits_bytes(value, loc, problems, c.MAX_CONTACT_ID_BYTES) or ""
    return ""


def _fields(form: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    value = form.get("fields", {})
    if isinstance(value, list):  # a PHP array whose keys happen to be 0..n-1
        value = {str(index): item for index, item in enumerate(value)}
    if not isinstance(value, dict):
        problems.append(dict_type(("body", "fields"), value))
        return {}
    for name in value:
        _check_name(name, ("body", "fields", name), problems)
    return value


def _check_name(name: str, loc: Loc, problems: list[Problem]) -> None:
    if len(name) > c.MAX_PROPERTY_NAME_CHARS:
        problems.append(too_long(loc, name, c.MAX_PROPERTY_NAME_CHARS))


def _named_contact(
    fields: Mapping[str, Any], contact_field: str | None, problems: list[Problem]
) -> str | None:
    """The contact a profile event names in its contact field; None when it names none."""
    value = fields.get(contact_field) if contact_field else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    loc = ("body", "fields", contact_field or "")
    if not isinstance(value, str):
        problems.append(string_type(loc, value))
    elif len(value) > c.MAX_CONTACT_ID_CHARS:
        problems.append(too_long(loc, value, c.MAX_CONTACT_ID_CHARS))
    else:
        return fits_bytes(value, loc, problems, c.MAX_CONTACT_ID_BYTES)
    return None


def event_id_for(source_id: str, body: bytes, action: str) -> str:
    """The same call delivered again gets the same id; see the module docstring for the rank."""
    digest = hashlib.sha256(source_id.encode() + b"\n" + body).hexdigest()[:32]
    return f"cp{ACTION_RANK[action]}-{digest}"


def to_event(notice: Notice, source: Source, request: WebhookRequest) -> Event:
    """The event of a notice, on the profile id's contact (``CopernicaSource`` may move it)."""
    deletes_contact = notice.entity == "profile" and notice.action == "delete"
    return Event(
        workspace=source.workspace,
        event_id=event_id_for(source.source_id, request.body, notice.action),
        contact_id=notice.profile_id,
        ts_us=notice.ts_us,
        properties=notice.properties(),
        source=SOURCE,
        event_name=f"{notice.entity}_{notice.action}",
        metadata=notice.metadata(source.source_id),
        received_us=request.received_us,
        kind="delete" if deletes_contact else "update",
    )


def check_form_content_type(value: str | None) -> None:
    """Raises ``UnsupportedMediaType`` (415) unless the body is declared form-urlencoded."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type == FORM_MEDIA_TYPE:
        return
    shown = f"Content-Type {media_type!r} is not supported" if media_type else "No Content-Type"
    raise UnsupportedMediaType(f"{shown}; send {FORM_MEDIA_TYPE}")


def check_token(source: Source, presented: str | None) -> None:
    """A source created with ``--token`` requires it. Raises ``SignatureRejected`` (401)."""
    if not source.config.get("secret_hashes"):
        return
    if not presented:
        raise SignatureRejected("missing_token", "Missing ?token= (this source requires one)")
    if not secret_matches(source, presented):
        raise SignatureRejected("wrong_token", "Wrong ?token= for this source")


# -- the source --------------------------------------------------------------------------------


def read_public_key(spec: str) -> tuple[str, str]:
    """``KEYID=PEMFILE`` -> (key id, the PEM text). Raises ``ValueError`` saying what is wrong."""
    key_id, sep, path = spec.partition("=")
    if not sep or not key_id or not path:
        raise ValueError(f"{spec!r}: use KEYID=PEMFILE")
    try:
        with open(path) as file:
            pem = file.read()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    return key_id, check_public_key(key_id, pem, path)


def check_public_key(key_id: str, pem: str, where: str) -> str:
    """``pem`` when it is an RSA public key in PEM form; else ``ValueError`` naming ``where``."""
    if "-----BEGIN PUBLIC KEY-----" not in pem and "-----BEGIN RSA PUBLIC KEY-----" not in pem:
        raise ValueError(f"{where} holds no PEM public key")
    try:  # checked now: a key Copernica cannot have signed with would fail every call later
        load_public_key(pem.encode(), pem=True, name=key_id)
    except ConfigurationError as exc:
        raise ValueError(f"{where}: {exc.detail}") from None
    return pem


def public_keys_from_json(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"KEYID": "<PEM text>", ...}`` (the JSON form of ``--public-key``) -> what the
    option's ``parse`` gives. Raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError('expected an object of key ids to PEM texts: {"KEYID": "-----BEGIN..."}')
    pairs = []
    for key_id, pem in value.items():
        if not key_id or not isinstance(pem, str):
            raise ValueError(f"{key_id!r}: expected a non-empty key id and its PEM text")
        pairs.append((key_id, check_public_key(key_id, pem, f"the key {key_id!r}")))
    return tuple(pairs)


def _config(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    config = {
        "account": values["account"],
        "contact_field": values["contact_field"],
        "public_keys": dict(values["public_keys"]),
    }
    return config, bool(values["token"])


def make_source(settings: Settings, store: Store) -> CopernicaSource:
    """The ``copernica`` kind of webhook source, on ``store`` (nonces and profile aliases)."""
    return CopernicaSource(
        store, settings.max_copernica_body_bytes, oldest_accepted_us=settings.oldest_accepted_us
    )


class CopernicaSource:
    """Verifies, maps and addresses Copernica calls; the route stores and answers."""

    kind = SOURCE

    def __init__(
        self,
        store: Store,
        max_body_bytes: int,
        dns_keys: KeyResolver | None = None,
        oldest_accepted_us: OldestAccepted | None = None,
    ):
        self.max_body_bytes = max_body_bytes
        self.oldest_accepted_us = oldest_accepted_us
        self._store = store
        self._dns_keys = dns_keys or DnsKeys()
        self._pinned: dict[str, tuple[tuple[tuple[str, str], ...], PinnedKeys]] = {}

    async def handle(self, source: Source, request: WebhookRequest) -> WebhookResult:
        """Raises ``SignatureRejected`` (401), ``UnsupportedMediaType`` (415),
        ``FormTooComplex`` (413), ``ValidationFailed`` (422), ``StorageUnavailable`` (503)."""
        nonce = await self._authenticate(source, request)
        try:
            result = await self._events(source, request)
        except ProfilehookError:
            await self._forget(nonce)  # refused: the sender's retry is not a replay
            raise
        return dataclasses.replace(result, undo=lambda: self._forget(nonce))

    async def _forget(self, nonce: Nonce) -> None:
        try:
            await self._store.forget_nonce(nonce)
        except StorageUnavailable as exc:
            log.warning(
                "copernica source %s: could not forget a refused call's nonce (%s); its retry"
                " with the same signature will be refused as a replay",
                nonce.source_id,
                exc,
            )

    async def _events(self, source: Source, request: WebhookRequest) -> WebhookResult:
        check_form_content_type(request.headers.get("content-type"))
        form = decode_form(request.body)
        unstorable_values = unstorable(form, ("body",))  # NUL: PostgreSQL cannot keep it
        if unstorable_values:
            raise ValidationFailed(unstorable_values)
        notice = read_notice(form, source.config.get("contact_field"))
        if notice is None:
            log.debug("copernica source %s: ignored a non-profile event", source.source_id)
            body = {"status": "accepted", "event_ids": [], "ignored": 1}
            return WebhookResult([], body, ignored=1)
        event = to_event(notice, source, request)
        if not within_retention([event], request.received_us, self.oldest_accepted_us)[0]:
            # Older than the retention window: skipped (and counted) before it can map or park.
            log.info(
                "copernica source %s: skipped %s, older than the retention window",
                source.source_id,
                event.event_id,
            )
            body = {"status": "accepted", "event_ids": [], "skipped": 1}
            return WebhookResult([], body, too_old=1)
        released: list[Released] = []
        events = await self._addressed(source, notice, event, released)
        body = {"status": "accepted", "event_ids": [event.event_id]}
        return WebhookResult(events, body, released=released)

    async def _authenticate(self, source: Source, request: WebhookRequest) -> Nonce:
        """The call's nonce, now remembered by the store. Raises ``SignatureRejected``, and
        ``StorageUnavailable`` when the store cannot tell whether the call is a replay."""
        signed = SignedRequest(request.method, request.target, request.headers, request.body)
        try:
            check_token(source, request.query.get("token"))
            # The DNS key lookup blocks: keep it off the event loop.
            verified = await asyncio.to_thread(
                verify_request,
                signed,
                account=str(source.config.get("account", "")),
                keys=self._keys(source),
                now_s=request.received_us / 1_000_000,
            )
            nonce = Nonce(source.source_id, verified.digest, verified.nonce)
            fresh_until_us = int(verified.fresh_until_s * 1_000_000)
            store = self._store
            if not await store.remember_nonce(nonce, fresh_until_us, request.received_us):
                raise SignatureRejected("replayed", "Replayed request: Digest and X-Nonce seen")
        except SignatureRejected as exc:
            log.warning("copernica source %s refused (%s): %s", source.source_id, exc.reason, exc)
            raise
        return nonce

    def _keys(self, source: Source) -> KeyResolver:
        """The source's pinned keys (built once per configuration), else the DNS keys.

        Raises ``ConfigurationError`` for a pinned key that is not an RSA public key.
        """
        pems = tuple(sorted((source.config.get("public_keys") or {}).items()))
        if not pems:
            return self._dns_keys
        cached = self._pinned.get(source.source_id)
        if cached is None or cached[0] != pems:
            keys = PinnedKeys.from_pem({key_id: pem.encode() for key_id, pem in pems})
            self._pinned[source.source_id] = cached = (pems, keys)
        return cached[1]

    async def _addressed(
        self, source: Source, notice: Notice, event: Event, released: list[Released]
    ) -> list[Event]:
        """The event on its contact: [] when it is parked until its profile is mapped. The
        parked events its mapping releases are added to ``released``."""
        if not source.config.get("contact_field"):
            return [event]
        contact = await self._contact_of(source, notice, event, released)
        if contact is None:
            log.info(
                "copernica source %s: %s parked until profile %s brings its contact field",
                source.source_id,
                event.event_id,
                notice.profile_id,
            )
            return []
        return [msgspec.structs.replace(event, contact_id=contact)]

    async def _contact_of(
        self, source: Source, notice: Notice, event: Event, released: list[Released]
    ) -> str | None:
        store = self._store
        key = (source.workspace, source.source_id, notice.profile_id)
        if notice.contact is not None:
            update = await store.put_alias(*key, notice.contact, event.version)
            if update.parked:
                released.append(_released(key, update))
            return notice.contact
        contact = await store.get_alias(*key)
        if contact is None:
            contact = await store.park_until_alias(source.source_id, notice.profile_id, event)
        return contact


def _released(key: tuple[str, str, str], update: AliasUpdate) -> Released:
    """The events that waited for this profile's contact, now on it: the route publishes them,
    then unparks them (they stay parked until then, so a crash in between loses nothing)."""
    workspace, source_id, profile_id = key
    events = [msgspec.structs.replace(e, contact_id=update.contact_id) for e in update.parked]
    return Released(workspace, source_id, profile_id, events)


SOURCE_KIND = Kind(
    name=SOURCE,
    title="Copernica",
    make_source=make_source,
    secret_in="query",
    config=_config,
    create_help="""A Copernica profile webhook source.

    \b
    Example:
      profilehook sources create copernica --workspace acme --account 12345 \\
          --contact-field customer_id --json
    """,
    json_help='Print {"source_id", "url", "kind", "workspace"}.',
    media_type=FORM_MEDIA_TYPE,
    openapi="Copernica: form-encoded (sub)profile events signed with its HTTP signature.",
    options=(
        CreateOption("--account", required=True, help="Copernica account id (X-Copernica-ID)."),
        CreateOption(
            "--contact-field", help="Profile field that holds the contact id (default: profile id)."
        ),
        CreateOption(
            "--public-key",
            name="public_keys",
            multiple=True,
            metavar="KEYID=PEMFILE",
            help="Pin a public key for a keyId instead of looking it up in DNS (repeatable).",
            parse=read_public_key,
            from_json=public_keys_from_json,
            json_schema={
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Pinned public keys: key id -> PEM text",
            },
        ),
        CreateOption(
            "--token",
            is_flag=True,
            help="Also require a secret ?token= in the URL (rotatable later).",
        ),
    ),
    extra="copernica",
    requires=("cryptography", "dns.resolver"),
)
