"""Copernica (sub)profile webhooks (SPEC 2.3): every mapping rule, the checks around it, and the
issue's life of a profile (created, updated out of order, given a subprofile, deleted) through the
in-process app and through a real server whose source was made with the CLI.

Bodies are written as PHP's ``http_build_query`` writes them (brackets as ``%5B``/``%5D``, lists
with ``[0]``, ``[1]``), or byte for byte as Copernica's documentation shows them. Calls are signed
as Copernica signs them, with the helpers of ``test_copernica_signature`` and a fresh ``Date`` and
``X-Nonce`` each time, covering the headers its documentation lists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from profilehook.api.app import create_app
from profilehook.api.webhooks import release
from profilehook.errors import (
    SignatureRejected,
    StorageUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from profilehook.events import Event
from profilehook.queues.memory import MemoryQueue
from profilehook.service import Services, running
from profilehook.settings import Settings
from profilehook.sources import registry
from profilehook.sources.copernica import (
    CopernicaSource,
    Notice,
    event_id_for,
    read_notice,
    to_event,
)
from profilehook.sources.copernica_signature import DnsKeys
from profilehook.sources.forms import decode_form
from profilehook.sources.webhooks import WebhookRequest
from profilehook.stores.base import Source, Store
from profilehook.stores.memory import MemoryStore
from profilehook.stores.sqlite import SqliteStore
from tests.conftest import new_key
from tests.support import (
    POSTGRES_URL,
    ServerProcess,
    create_key,
    drop_schema,
    postgres_url,
    require_server,
    run_cli,
    store_url_for,
    unique_schema,
    wait_until,
)
from tests.test_copernica_signature import (
    ACCOUNT,
    KEY_ID,
    FakeTxt,
    digest_of,
    dkim_record,
    pem,
    sign,
)
from tests.test_forms import COPERNICA_PROFILE

MAX_BODY_BYTES = Settings().max_copernica_body_bytes
T = 1_700_000_000  # event times of the scenarios, Unix seconds
S = 1_000_000  # one second in microseconds
FORM = "application/x-www-form-urlencoded"
# What Copernica's documentation lists as signed, in its spelling.
COVERED = "(request-target) Host Date Content-length Content-type X-Copernica-ID Digest X-nonce"


# -- writing and signing calls as Copernica does ----------------------------------------------


def http_build_query(data: Mapping[str, Any]) -> bytes:
    """PHP's ``http_build_query``: nested keys in escaped brackets, lists indexed from 0."""
    pairs: list[str] = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{name}[{key}]", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{name}[{index}]", item)
        else:
            pairs.append(f"{quote_plus(name, safe='')}={quote_plus(str(value), safe='')}")

    for name, value in data.items():
        walk(name, value)
    return "&".join(pairs).encode()


def profile_call(
    fields: Mapping[str, str] | None = None,
    *,
    at: int = T,
    type_: str = "update",
    profile: str = "123",
    interests: Any = None,
) -> bytes:
    call: dict[str, Any] = {"type": type_, "profile": profile, "time": str(at), "database": "1"}
    call["fields"] = dict(fields or {})
    if interests is not None:
        call["interests"] = interests
    return http_build_query(call)


def subprofile_call(
    fields: Mapping[str, str] | None = None,
    *,
    at: int = T,
    type_: str = "update",
    profile: str = "123",
    collection: str = "7",
    subprofile: str = "55",
) -> bytes:
    call = {"type": type_, "subprofile": subprofile, "profile": profile, "database": "1"}
    return http_build_query(
        {**call, "collection": collection, "time": str(at), "fields": dict(fields or {})}
    )


@pytest.fixture(scope="module")
def copernica_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed_headers(
    private: rsa.RSAPrivateKey,
    body: bytes,
    target: str,
    host: str,
    *,
    date_s: float | None = None,
    account: str = ACCOUNT,
    content_type: str = FORM,
) -> dict[str, str]:
    headers = {
        "Host": host,
        "Date": formatdate(time.time() if date_s is None else date_s, usegmt=True),
        "X-Copernica-ID": account,
        "Digest": digest_of(body),
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "X-Nonce": secrets.token_hex(8),
    }
    headers["Signature"] = sign(private, headers, target=target, covered=COVERED)
    return headers


class Hook:
    """A Copernica source of workspace ``acme`` and an HTTP client to the app that serves it."""

    def __init__(
        self,
        client: Any,
        host: str,
        source_id: str,
        auth: dict[str, str],
        key: rsa.RSAPrivateKey,
        token: str | None = None,
    ):
        self.client, self.host, self.auth, self.key = client, host, auth, key
        self.source_id = source_id
        self.target = f"/v1/webhooks/{source_id}" + (f"?token={token}" if token else "")

    def post(self, body: bytes, *, target: str | None = None, **signing: Any) -> httpx.Response:
        target = target or self.target
        headers = signed_headers(signing.pop("key", self.key), body, target, self.host, **signing)
        return self.send(body, headers, target)

    def send(self, body: bytes, headers: dict[str, str], target: str | None = None) -> Any:
        return self.client.post(target or self.target, content=body, headers=headers)

    def accepted(self, body: bytes) -> str:
        """Post a call that must be accepted; its event id."""
        r = self.post(body)
        assert r.status_code == 200, r.text
        event_ids = r.json()["event_ids"]
        assert r.json() == {"status": "accepted", "event_ids": event_ids}
        assert len(event_ids) == 1
        event_id: str = event_ids[0]
        return event_id

    def event(self, event_id: str) -> Any:
        r = self.client.get(f"/v1/events/{event_id}", headers=self.auth)
        return r.json() if r.status_code == 200 else None

    def applied(self, event_id: str) -> None:
        wait_until(lambda: (self.event(event_id) or {}).get("status") == "applied")

    def contact(self, contact_id: str, until: Callable[[Any], bool] = bool) -> dict[str, Any]:
        def fetch() -> Any:
            r = self.client.get(f"/v1/contacts/{contact_id}", headers=self.auth)
            return r.json() if r.status_code == 200 and until(r.json()) else None

        found: dict[str, Any] = wait_until(fetch)
        return found

    def contact_status(self, contact_id: str) -> int:
        status: int = self.client.get(f"/v1/contacts/{contact_id}", headers=self.auth).status_code
        return status

    def metric(self, outcome: str) -> float:
        """``profilehook_events_total`` of source copernica with this outcome."""
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == "profilehook_events_total" and sample.labels == {
                    "source": "copernica",
                    "outcome": outcome,
                }:
                    return float(sample.value)
        return 0.0


def new_source(settings: Settings, key: rsa.RSAPrivateKey, **options: Any) -> tuple[str, str]:
    """A Copernica source pinning ``key``, made by a second store on the same data (as the CLI
    does). Returns its id and its token (``""`` without ``token=True``)."""
    token = options.pop("token", False)
    config = {"account": ACCOUNT, "public_keys": {KEY_ID: pem(key).decode()}, **options}

    async def make() -> tuple[str, str]:
        async with running(settings) as services:
            source, secret = await registry.create_source(
                services.store, "copernica", "acme", config, with_secret=token
            )
            return source.source_id, secret or ""

    return asyncio.run(make())


def make_hook(client: TestClient, settings: Settings, auth: dict[str, str], key: Any, **kw: Any):
    source_id, token = new_source(settings, key, **kw)
    return Hook(client, "testserver", source_id, auth, key, token or None)


@pytest.fixture
def hook(client: TestClient, settings: Settings, auth: dict[str, str], copernica_key) -> Hook:
    return make_hook(client, settings, auth, copernica_key)


@pytest.fixture
def customer_hook(client, settings, auth, copernica_key) -> Hook:
    """A source whose contacts are the profiles' ``customer_id``."""
    return make_hook(client, settings, auth, copernica_key, contact_field="customer_id")


# -- the mapping, rule by rule ----------------------------------------------------------------


def notice_of(body: bytes, contact_field: str | None = None) -> Notice | None:
    return read_notice(decode_form(body), contact_field)


def notice(body: bytes, contact_field: str | None = None) -> Notice:
    found = notice_of(body, contact_field)
    assert found is not None
    return found


def problems_of(body: bytes) -> list[tuple[Any, str]]:
    with pytest.raises(ValidationFailed) as caught:
        notice_of(body)
    assert caught.value.status_code == 422
    return [(tuple(p["loc"]), p["type"]) for p in caught.value.detail]


SOURCE = Source("src_test", "acme", "copernica", {"account": ACCOUNT}, 0)


def event_of(body: bytes) -> Event:
    request = WebhookRequest("POST", "/v1/webhooks/src_test", {}, body, received_us=42)
    return to_event(notice(body), SOURCE, request)


class TestProfileEvents:
    def test_the_documented_profile_update_sets_every_field_and_the_active_interests(self):
        event = event_of(COPERNICA_PROFILE)
        assert event.properties == {
            "name": "Johny",
            "mail": "johny+newemail@example.com",
            "interests": ["blue"],
        }
        assert (event.kind, event.contact_id, event.event_name) == (
            "update",
            "123",
            "profile_update",
        )
        assert event.metadata == {"source_id": "src_test", "profile": "123", "database": "1"}
        assert (event.source, event.workspace, event.received_us) == ("copernica", "acme", 42)

    def test_a_profile_create_is_the_same_full_state(self):
        event = event_of(profile_call({"name": "Jo"}, type_="create"))
        assert (event.kind, event.properties) == ("update", {"name": "Jo", "interests": []})

    def test_empty_fields_are_kept_as_empty_strings(self):
        assert event_of(b"type=update&profile=1&time=1&fields[name]=").properties == {
            "name": "",
            "interests": [],
        }

    def test_a_profile_delete_deletes_the_contact_as_of_its_time(self):
        event = event_of(profile_call({"name": "Jo"}, type_="delete", at=T + 5))
        assert (event.kind, event.properties, event.ts_us) == ("delete", {}, (T + 5) * S)

    def test_the_type_falls_back_to_action_and_is_read_in_any_case(self):
        assert notice(b"action=delete&profile=1&time=1").action == "delete"
        assert notice(b"type=UPDATE&action=delete&profile=1&time=1").action == "update"
        assert notice(b"type=&action=create&profile=1&time=1").action == "create"

    @pytest.mark.parametrize(
        "kind", ["open", "click", "error", "unsubscribe", "abuse", "impression", "bounce"]
    )
    def test_e_mail_events_are_not_profile_events(self, kind):
        assert notice_of(f"type={kind}&profile=1&time=1&destination=9".encode()) is None


ACTIVE_BLUE_AND_RED = [
    # as Copernica's documentation writes a list: bare brackets
    b"interests[]=red&interests[]=blue",
    # as http_build_query writes a list
    b"interests%5B0%5D=red&interests%5B1%5D=blue",
    # a list with holes is still a list of names
    b"interests%5B3%5D=red&interests%5B7%5D=blue",
    # flags, as in the documented example
    b"interests%5Bblue%5D=1&interests%5Bred%5D=1&interests%5Bgreen%5D=0",
    # grouped lists
    b"interests%5Bcolours%5D%5B0%5D=blue&interests%5Bwarm%5D%5B0%5D=red",
    # grouped flags, the same name in two groups counted once
    b"interests%5Bcolours%5D%5Bblue%5D=1&interests%5Bcolours%5D%5Bred%5D=1"
    b"&interests%5Bwarm%5D%5Bred%5D=1&interests%5Bsizes%5D%5Bxl%5D=0",
]


class TestInterests:
    @pytest.mark.parametrize("wire", ACTIVE_BLUE_AND_RED, ids=range(len(ACTIVE_BLUE_AND_RED)))
    def test_every_wire_shape_gives_the_sorted_active_names(self, wire):
        body = b"type=update&profile=1&time=1&" + wire
        assert notice(body).properties()["interests"] == ["blue", "red"]

    def test_no_interests_sent_means_none_since_php_leaves_empty_arrays_out(self):
        assert notice(b"type=update&profile=1&time=1").properties()["interests"] == []

    def test_the_list_replaces_a_field_named_interests(self):
        body = b"type=update&profile=1&time=1&fields[interests]=x&interests[]=a"
        assert notice(body).properties() == {"interests": ["a"]}

    def test_a_flag_that_is_neither_on_nor_off_is_refused(self):
        body = b"type=update&profile=1&time=1&interests[blue]=maybe"
        assert problems_of(body) == [(("body", "interests", "blue"), "value_error")]


class TestContactIds:
    def test_the_contact_is_the_profile_id(self):
        assert event_of(profile_call({"customer_id": "C-1"}, profile="77")).contact_id == "77"

    def test_with_a_contact_field_a_profile_event_names_its_contact(self):
        body = profile_call({"customer_id": "C-1"}, profile="77")
        assert notice(body, "customer_id").contact == "C-1"

    @pytest.mark.parametrize("fields", [{}, {"customer_id": ""}, {"customer_id": "  "}])
    def test_a_profile_without_a_value_in_the_field_names_no_contact(self, fields):
        assert notice(profile_call(fields), "customer_id").contact is None

    def test_a_subprofile_never_names_a_contact_even_with_that_field(self):
        assert notice(subprofile_call({"customer_id": "C-9"}), "customer_id").contact is None


class TestSubprofileEvents:
    @pytest.mark.parametrize("type_", ["create", "update"])
    def test_its_fields_become_one_property_of_the_parent_profiles_contact(self, type_):
        event = event_of(subprofile_call({"total": "9.95", "sku": "A"}, type_=type_))
        assert event.contact_id == "123"
        assert event.properties == {"subprofiles.7.55": {"total": "9.95", "sku": "A"}}
        assert (event.kind, event.event_name) == ("update", f"subprofile_{type_}")
        assert event.metadata == {
            "source_id": "src_test",
            "profile": "123",
            "database": "1",
            "collection": "7",
            "subprofile": "55",
        }

    def test_a_subprofile_delete_unsets_its_property_and_leaves_the_contact(self):
        event = event_of(subprofile_call({"total": "9.95"}, type_="delete"))
        assert (event.kind, event.properties) == ("update", {"subprofiles.7.55": None})

    def test_the_documented_subprofile_example(self):
        body = b"type=update&subprofile=123&id=12&database=1&collection=2&profile=123&time=1"
        assert event_of(body + b"&fields%5Bname%5D=Johny").properties == {
            "subprofiles.2.123": {"name": "Johny"}
        }


class TestEventTime:
    def test_time_is_unix_seconds_and_wins_over_the_local_times(self):
        body = b"type=update&profile=1&time=1700000000&timestamp=1979-02-12+12%3A49%3A23"
        assert notice(body).ts_us == 1_700_000_000 * S

    def test_time_may_have_decimals(self):
        assert notice(b"type=update&profile=1&time=1700000000.25").ts_us == 1_700_000_000_250_000

    @pytest.mark.parametrize(
        ("local", "utc_s"),
        [
            ("timestamp=1979-02-12+12%3A49%3A23", 287_668_163),  # CET: 11:49:23 UTC
            ("timestamp=2024-07-01+12%3A00%3A00", 1_719_828_000),  # CEST: 10:00 UTC
            ("modified=2024-07-01+12%3A00%3A00&created=2020-01-01+00%3A00%3A00", 1_719_828_000),
            ("created=2024-01-01+00%3A00%3A00", 1_704_063_600),  # 23:00 UTC the day before
        ],
    )
    def test_without_time_timestamp_modified_or_created_are_amsterdam_wall_time(self, local, utc_s):
        assert notice(b"type=update&profile=1&" + local.encode()).ts_us == utc_s * S

    def test_timestamp_is_read_before_modified_and_created(self):
        body = b"type=update&profile=1&created=2001-01-01&modified=2002-01-01&timestamp=2003-01-01"
        assert notice(body).ts_us == 1_041_375_600 * S

    @pytest.mark.parametrize(
        ("field", "value"),
        [("time", "soon"), ("time", "-5"), ("time", "1e9"), ("timestamp", "12/02/1979")],
    )
    def test_a_garbled_time_is_refused(self, field, value):
        body = f"type=update&profile=1&{field}={quote_plus(value)}".encode()
        assert problems_of(body) == [(("body", field), "value_error")]


class TestRefusedForms:
    def test_every_missing_field_is_listed(self):
        assert problems_of(b"database=1") == [
            (("body", "type"), "missing"),
            (("body", "profile"), "missing"),
            (("body", "time"), "missing"),
        ]

    def test_a_subprofile_event_needs_its_collection(self):
        assert problems_of(b"type=update&profile=1&subprofile=2&time=1") == [
            (("body", "collection"), "missing")
        ]

    def test_garbled_shapes_are_listed_together(self):
        body = b"type[]=update&profile=&time[x]=1&fields=flat"
        assert problems_of(body) == [
            (("body", "type"), "string_type"),
            (("body", "profile"), "string_too_short"),
            (("body", "time"), "string_type"),
            (("body", "fields"), "dict_type"),
        ]

    def test_a_field_name_longer_than_a_property_name_may_be_is_refused(self):
        name = "f" * 257
        body = f"type=update&profile=1&time=1&fields[{name}]=x".encode()
        assert problems_of(body) == [(("body", "fields", name), "string_too_long")]


class TestEventIds:
    def test_the_same_call_delivered_again_has_the_same_id(self):
        body = profile_call({"name": "Jo"})
        assert event_of(body).event_id == event_id_for("src_test", body, "update")
        assert event_of(body).event_id == event_of(body).event_id
        assert event_id_for("src_a", body, "update") != event_id_for("src_b", body, "update")
        assert event_id_for("src_a", body, "update") != event_id_for("src_a", body + b" ", "update")

    def test_within_one_second_a_delete_beats_an_update_which_beats_a_create(self):
        versions = {
            action: event_of(profile_call({"n": action}, type_=action, at=T)).version
            for action in ("create", "update", "delete")
        }
        assert versions["create"] < versions["update"] < versions["delete"]


# -- the store's profile aliases, on every backend --------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "p.db")
    await opened.open()
    yield opened
    await opened.close()


def parked_event(event_id: str, workspace: str = "acme") -> Event:
    return Event(workspace, event_id, "123", T * S, {"subprofiles.7.55": {"n": "1"}})


class TestAliases:
    async def test_the_mapping_with_the_greatest_version_wins_in_any_order(self, store):
        newer, older = ((T + 1) * S, "b"), (T * S, "a")
        assert (await store.put_alias("acme", "src", "123", "C-new", newer)).contact_id == "C-new"
        assert (await store.put_alias("acme", "src", "123", "C-old", older)).contact_id == "C-new"
        assert await store.get_alias("acme", "src", "123") == "C-new"
        assert await store.get_alias("acme", "src", "999") is None

    async def test_an_unmapped_profile_parks_events_until_it_is_mapped(self, store):
        assert await store.park_until_alias("src", "123", parked_event("e2")) is None
        assert await store.park_until_alias("src", "123", parked_event("e1")) is None
        assert await store.park_until_alias("src", "123", parked_event("e1")) is None  # again
        update = await store.put_alias("acme", "src", "123", "C-1", (T * S, "p"))
        assert [e.event_id for e in update.parked] == ["e1", "e2"]
        assert update.parked[0] == parked_event("e1")
        # Until unparked, they stay: a crash before publishing them loses nothing.
        update = await store.put_alias("acme", "src", "123", "C-1", (T * S, "p"))
        assert len(update.parked) == 2
        await store.unpark("acme", "src", "123", ["e1", "e2"])
        assert (await store.put_alias("acme", "src", "123", "C-1", (T * S, "p"))).parked == []

    async def test_a_mapped_profile_parks_nothing_and_answers_its_contact(self, store):
        await store.put_alias("acme", "src", "123", "C-1", (T * S, "p"))
        assert await store.park_until_alias("src", "123", parked_event("e1")) == "C-1"
        assert (await store.put_alias("acme", "src", "123", "C-1", (T * S, "p"))).parked == []

    async def test_aliases_are_kept_per_workspace_and_source(self, store):
        await store.put_alias("acme", "src", "123", "C-1", (T * S, "p"))
        assert await store.get_alias("other", "src", "123") is None
        assert await store.get_alias("acme", "src2", "123") is None
        assert await store.park_until_alias("src", "123", parked_event("e", "other")) is None


# -- the source's handler, without HTTP -------------------------------------------------------


def direct_request(key: Any, body: bytes, **signing: Any) -> WebhookRequest:
    target = "/v1/webhooks/src_test"
    headers = signed_headers(key, body, target, "hooks.example.com", **signing)
    lowered = {name.lower(): value for name, value in headers.items()}
    return WebhookRequest("POST", target, lowered, body, received_us=time.time_ns() // 1000)


@pytest.fixture
def services(tmp_path: Path) -> Services:
    return Services(Settings(data_dir=tmp_path), MemoryQueue(), MemoryStore())


class TestHandler:
    async def test_without_pinned_keys_the_dns_key_is_looked_up_off_the_event_loop(
        self, services, copernica_key
    ):
        threads: list[threading.Thread] = []
        lookup = FakeTxt({KEY_ID: [dkim_record(copernica_key)]})

        def spying(name: str) -> Any:
            threads.append(threading.current_thread())
            return lookup(name)

        handler = CopernicaSource(services.store, MAX_BODY_BYTES, dns_keys=DnsKeys(lookup=spying))
        result = await handler.handle(SOURCE, direct_request(copernica_key, COPERNICA_PROFILE))
        assert result.status == 200 and len(result.events) == 1
        assert threads and threads[0] is not threading.main_thread()

    async def test_a_wrong_content_type_is_refused_after_the_signature(
        self, services, copernica_key
    ):
        handler = CopernicaSource(
            services.store, MAX_BODY_BYTES, dns_keys=DnsKeys(lookup=FakeTxt({}))
        )
        request = direct_request(copernica_key, b"{}", content_type="application/json")
        with pytest.raises(SignatureRejected):  # no key: unsigned callers learn nothing more
            await handler.handle(SOURCE, request)
        pinned = Source("src_test", "acme", "copernica", _pinned_config(copernica_key), 0)
        with pytest.raises(UnsupportedMediaType) as caught:
            await handler.handle(pinned, direct_request(copernica_key, b"{}", content_type="x/y"))
        assert caught.value.status_code == 415

    async def test_parked_events_are_published_once_their_profile_is_mapped(
        self, services, copernica_key
    ):
        config = {**_pinned_config(copernica_key), "contact_field": "customer_id"}
        source = Source("src_test", "acme", "copernica", config, 0)
        handler = CopernicaSource(services.store, MAX_BODY_BYTES)
        sub = await handler.handle(source, direct_request(copernica_key, subprofile_call()))
        assert sub.events == [] and len(sub.body["event_ids"]) == 1
        body = profile_call({"customer_id": "C-1"})
        prof = await handler.handle(source, direct_request(copernica_key, body))
        assert [e.contact_id for e in prof.events] == ["C-1"]
        await release(services, "copernica", prof.released)  # what the route does next
        released = await services.queue.fetch(10, 0)
        assert [(d.event.event_id, d.event.contact_id) for d in released] == [
            (sub.body["event_ids"][0], "C-1")
        ]
        again = await services.store.put_alias("acme", "src_test", "123", "C-0", (0, ""))
        assert (again.contact_id, again.parked) == ("C-1", [])  # released once, then forgotten

    async def test_released_events_stay_parked_until_the_route_has_published_them(
        self, services, copernica_key
    ):
        config = {**_pinned_config(copernica_key), "contact_field": "customer_id"}
        source = Source("src_test", "acme", "copernica", config, 0)
        handler = CopernicaSource(services.store, MAX_BODY_BYTES)
        sub = await handler.handle(source, direct_request(copernica_key, subprofile_call()))
        body = profile_call({"customer_id": "C-1"})
        prof = await handler.handle(source, direct_request(copernica_key, body))

        class Down(MemoryQueue):
            async def publish(self, events: Sequence[Event]) -> None:
                raise StorageUnavailable()

        with pytest.raises(StorageUnavailable):  # as a crash before unpark would
            await release(dataclasses.replace(services, queue=Down()), "copernica", prof.released)
        again = await services.store.put_alias("acme", "src_test", "123", "C-1", (0, ""))
        assert [e.event_id for e in again.parked] == sub.body["event_ids"]  # released again


def _pinned_config(key: Any) -> dict[str, Any]:
    return {"account": ACCOUNT, "public_keys": {KEY_ID: pem(key).decode()}}


# -- over HTTP, in process --------------------------------------------------------------------


def run_profile_life(hook: Hook) -> None:
    """The issue's scenario: created, updated out of order, given a subprofile, deleted."""
    hook.accepted(profile_call({"name": "Jo", "plan": "free"}, type_="create", at=T))
    newer = profile_call({"name": "Johny", "plan": "pro"}, at=T + 20, interests=["blue"])
    older = profile_call({"name": "Johnny", "plan": "basic"}, at=T + 10, interests={"red": "1"})
    newer_id = hook.accepted(newer)
    hook.applied(hook.accepted(older))  # the older update arrives after the newer one
    contact = hook.contact("123")
    assert contact["properties"] == {"name": "Johny", "plan": "pro", "interests": ["blue"]}
    assert contact["versions"]["name"] == {"timestamp": T + 20, "event_id": newer_id}

    order = subprofile_call({"total": "9.95"}, collection="7", subprofile="55", at=T + 30)
    hook.accepted(order)
    contact = hook.contact("123", until=lambda c: "subprofiles.7.55" in c["properties"])
    assert contact["properties"]["subprofiles.7.55"] == {"total": "9.95"}
    assert contact["properties"]["name"] == "Johny"

    hook.applied(hook.accepted(profile_call(type_="delete", at=T + 40)))
    assert hook.contact_status("123") == 404

    # The newer update delivered again is a duplicate; an update older than the delete, new to
    # the service, does not bring the contact back.
    assert hook.accepted(newer) == newer_id
    wait_until(lambda: hook.metric("duplicate") >= 1)
    hook.applied(hook.accepted(profile_call({"name": "Zombie"}, at=T + 35)))
    assert hook.contact_status("123") == 404


class TestOverHttp:
    def test_the_life_of_a_profile(self, hook):
        run_profile_life(hook)

    def test_the_documented_example_is_accepted_and_applied(self, hook):
        r = hook.post(COPERNICA_PROFILE)
        assert r.status_code == 200
        event_id = event_id_for(hook.source_id, COPERNICA_PROFILE, "update")
        assert r.json() == {"status": "accepted", "event_ids": [event_id]}
        hook.applied(event_id)
        assert hook.event(event_id)["source"] == "copernica"
        assert hook.contact("123")["properties"]["interests"] == ["blue"]

    def test_e_mail_events_are_answered_200_and_counted_as_ignored(self, hook):
        body = b"type=click&profile=123&time=1700000000&destination=5&url=https%3A%2F%2Fx.nl"
        r = hook.post(body)
        assert r.status_code == 200
        assert r.json() == {"status": "accepted", "event_ids": [], "ignored": 1}
        assert hook.metric("ignored") == 1
        assert hook.event(event_id_for(hook.source_id, body, "update")) is None


def refusal(hook: Hook, r: Any, detail: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": detail}
    assert hook.metric("accepted") == 0


class TestRefusedOverHttp:
    def test_a_signature_by_another_key(self, hook, other_key):
        r = hook.post(profile_call(), key=other_key)
        refusal(hook, r, f"Signature does not verify with key '{KEY_ID}'")

    def test_another_account(self, hook):
        r = hook.post(profile_call(), account="someone_else")
        refusal(hook, r, "X-Copernica-ID 'someone_else' is not this source's account")

    def test_a_stale_date(self, hook):
        r = hook.post(profile_call(), date_s=time.time() - 400)
        assert r.status_code == 401 and r.json()["detail"].startswith("Date is 40")

    def test_a_replayed_call(self, hook):
        body = profile_call()
        headers = signed_headers(hook.key, body, hook.target, hook.host)
        assert hook.send(body, headers).status_code == 200
        r = hook.send(body, headers)
        assert r.status_code == 401
        assert r.json() == {"detail": "Replayed request: Digest and X-Nonce seen"}

    def test_a_call_refused_for_an_outage_may_be_retried_with_the_same_signature(
        self, hook, client, monkeypatch
    ):
        """Given a signed call answered 503 (the log was down), when Copernica re-sends the very
        same request, then it is stored, not refused as a replay: nothing is lost."""
        body = profile_call({"name": "Retried"})
        headers = signed_headers(hook.key, body, hook.target, hook.host)
        queue = client.app.services.queue
        publish = queue.publish

        async def down(events):
            raise StorageUnavailable("log down")

        monkeypatch.setattr(queue, "publish", down)
        assert hook.send(body, headers).status_code == 503
        monkeypatch.setattr(queue, "publish", publish)
        retried = hook.send(body, headers)
        assert retried.status_code == 200, retried.text
        hook.applied(retried.json()["event_ids"][0])

    def test_a_tampered_body(self, hook):
        body = profile_call({"name": "Jo"})
        headers = signed_headers(hook.key, body, hook.target, hook.host)
        r = hook.send(profile_call({"name": "Evil"}), headers)
        refusal(hook, r, "Digest does not match the body")

    def test_a_signature_for_another_url(self, hook):
        body = profile_call()
        headers = signed_headers(hook.key, body, "/v1/webhooks/src_other", hook.host)
        refusal(hook, hook.send(body, headers), f"Signature does not verify with key '{KEY_ID}'")

    def test_a_source_with_a_token_needs_it_as_well(self, client, settings, auth, copernica_key):
        hook = make_hook(client, settings, auth, copernica_key, token=True)
        bare = f"/v1/webhooks/{hook.source_id}"
        missing = hook.post(profile_call(), target=bare)
        refusal(hook, missing, "Missing ?token= (this source requires one)")
        wrong = hook.post(profile_call(), target=f"{bare}?token=phs_guess")
        refusal(hook, wrong, "Wrong ?token= for this source")
        assert hook.accepted(profile_call())

    def test_a_body_over_64_kib(self, hook):
        body = profile_call({"bio": "x" * 70_000})
        r = hook.post(body)
        assert r.status_code == 413
        assert r.json() == {"detail": "Request body is larger than the limit of 65536 bytes"}

    def test_a_form_with_more_than_1000_fields(self, hook):
        r = hook.post(profile_call({f"f{i}": "x" for i in range(1_000)}))
        assert r.status_code == 413
        assert r.json() == {"detail": "Form has more than 1000 fields"}

    def test_a_body_that_is_not_a_form(self, hook):
        r = hook.post(b'{"type": "update"}', content_type="application/json")
        assert r.status_code == 415
        assert r.json() == {
            "detail": "Content-Type 'application/json' is not supported;"
            " send application/x-www-form-urlencoded"
        }

    def test_a_form_missing_what_the_mapping_needs(self, hook):
        r = hook.post(b"type=update&fields%5Bname%5D=Jo")
        assert r.status_code == 422
        assert [p["loc"] for p in r.json()["detail"]] == [["body", "profile"], ["body", "time"]]


class TestContactField:
    def test_a_subprofile_before_its_profile_waits_and_then_lands_on_the_customer(
        self, customer_hook
    ):
        hook = customer_hook
        order = hook.accepted(subprofile_call({"total": "5"}, at=T + 5))  # overtook its profile
        # Parked, not published: neither queued nor on the profile id's contact.
        assert hook.event(order) is None and hook.contact_status("123") == 404

        hook.accepted(profile_call({"customer_id": "C-1", "name": "Jo"}, at=T))
        contact = hook.contact("C-1", until=lambda c: len(c["properties"]) == 4)
        assert contact["properties"] == {
            "customer_id": "C-1",
            "name": "Jo",
            "interests": [],
            "subprofiles.7.55": {"total": "5"},
        }
        hook.applied(order)
        assert hook.event(order)["contact_id"] == "C-1"

    def test_once_mapped_every_event_of_the_profile_goes_to_the_customer(self, customer_hook):
        hook = customer_hook
        hook.applied(hook.accepted(profile_call({"customer_id": "C-1", "name": "Jo"}, at=T)))
        hook.accepted(subprofile_call({"total": "7"}, subprofile="56", at=T + 1))
        hook.accepted(profile_call({"name": "Joanna"}, at=T + 2))  # the field left empty
        contact = hook.contact("C-1", until=lambda c: c["properties"].get("name") == "Joanna")
        hook.contact("C-1", until=lambda c: "subprofiles.7.56" in c["properties"])
        assert contact["properties"]["customer_id"] == "C-1"
        hook.applied(hook.accepted(subprofile_call(type_="delete", subprofile="56", at=T + 3)))
        assert "subprofiles.7.56" not in hook.contact("C-1")["properties"]
        assert hook.contact_status("123") == 404


# -- through a real server, the source made with the CLI --------------------------------------


@pytest.mark.slow
def test_through_a_real_server_with_a_source_made_by_the_cli(tmp_path, copernica_key):
    data_dir = tmp_path / "data"
    pem_file = tmp_path / "copernica.pem"
    pem_file.write_bytes(pem(copernica_key))
    made = run_cli(
        data_dir,
        *("sources", "create", "copernica", "--workspace", "acme", "--account", ACCOUNT),
        *("--public-key", f"{KEY_ID}={pem_file}", "--json"),
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["kind"] == "copernica" and created["workspace"] == "acme"
    auth = {"Authorization": f"Bearer {create_key(data_dir)['key']}"}
    server = ServerProcess(data_dir).start()
    try:
        assert created["url"].endswith(f"/v1/webhooks/{created['source_id']}")
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            host = f"127.0.0.1:{server.port}"
            run_profile_life(Hook(client, host, created["source_id"], auth, copernica_key))
    finally:
        server.stop()


# -- replays are refused by every process on the store, after a restart too ------------------


def replay_refused(response: Any) -> bool:
    return bool(
        response.status_code == 401
        and response.json() == {"detail": "Replayed request: Digest and X-Nonce seen"}
    )


@pytest.mark.slow
def test_given_a_call_served_by_one_server_when_replayed_to_another_or_after_a_restart_then_401(
    tmp_path, copernica_key
):
    """Two ``serve`` processes on one data directory, as behind a load balancer: the replay of
    a signed call is refused by the other, and by the first once restarted."""
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    source_id, _ = new_source(settings, copernica_key)
    one, two = ServerProcess(data_dir).start(), ServerProcess(data_dir).start()
    try:
        body = profile_call({"name": "Once"})
        target = f"/v1/webhooks/{source_id}"
        headers = signed_headers(copernica_key, body, target, "hooks.example.com")
        first = httpx.post(one.base_url + target, content=body, headers=headers, timeout=10)
        assert first.status_code == 200, first.text

        assert replay_refused(httpx.post(two.base_url + target, content=body, headers=headers))
        one.stop()
        one.start()
        assert replay_refused(httpx.post(one.base_url + target, content=body, headers=headers))
    finally:
        one.stop()
        two.stop()


def test_given_two_processes_on_one_postgresql_schema_then_a_replay_to_the_other_is_401(
    tmp_path, copernica_key
):
    """The same on PostgreSQL: two apps (each its own process's store) on one schema; a call
    refused for an outage by one may still be retried with the same signature on the other."""
    require_server(POSTGRES_URL, 5432)
    schema = unique_schema()
    try:
        store_url = postgres_url(schema)
        apps = [Settings(data_dir=tmp_path / name, store_url=store_url) for name in ("a", "b")]
        source_id, _ = new_source(apps[0], copernica_key)
        target = f"/v1/webhooks/{source_id}"
        with (
            TestClient(create_app(apps[0]), raise_server_exceptions=False) as one,
            TestClient(create_app(apps[1]), raise_server_exceptions=False) as two,
        ):
            body = profile_call({"name": "Once"})
            headers = signed_headers(copernica_key, body, target, "testserver")
            assert one.post(target, content=body, headers=headers).status_code == 200
            assert replay_refused(two.post(target, content=body, headers=headers))
            assert replay_refused(one.post(target, content=body, headers=headers))

            body = profile_call({"name": "Retried"})
            headers = signed_headers(copernica_key, body, target, "testserver")
            queue = one.app.services.queue  # type: ignore[attr-defined]
            publish = queue.publish

            async def down(events: Any) -> None:
                raise StorageUnavailable("log down")

            queue.publish = down
            assert one.post(target, content=body, headers=headers).status_code == 503
            queue.publish = publish
            assert two.post(target, content=body, headers=headers).status_code == 200
    finally:
        drop_schema(schema)


# -- a deleted profile's data is not readable in its history ----------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_given_a_profile_delete_then_its_history_up_to_the_delete_is_not_readable(
    store, tmp_path, copernica_key
):
    with store_url_for(store) as url:
        settings = Settings(data_dir=tmp_path / "data", store_url=url)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            auth = {"Authorization": f"Bearer {new_key(settings, 'acme')}"}
            hook = make_hook(client, settings, auth, copernica_key)
            created = hook.accepted(profile_call({"mail": "jo@example.com"}, type_="create"))
            hook.applied(hook.accepted(profile_call({"name": "Jo"}, at=T + 5)))
            hook.applied(created)
            history = client.get("/v1/contacts/123/history", headers=auth)
            assert len(history.json()["events"]) == 2

            hook.applied(hook.accepted(profile_call(type_="delete", at=T + 10)))

            gone = client.get("/v1/contacts/123/history", headers=auth)
            assert (gone.status_code, gone.json()) == (404, {"detail": "Contact not found"})
            later = hook.accepted(profile_call({"name": "New"}, at=T + 20))
            hook.applied(later)
            hook.applied(hook.accepted(profile_call({"name": "Old"}, at=T + 1)))  # arrives late
            shown = client.get("/v1/contacts/123/history", headers=auth).json()["events"]
            assert [e["event_id"] for e in shown] == [later]
            assert "jo@example.com" not in client.get("/v1/contacts/123/history", headers=auth).text
