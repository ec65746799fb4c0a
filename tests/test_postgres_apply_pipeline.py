"""The PostgreSQL store's apply: its rows as binary arrays made in one pass, its writes sent in
pipeline mode a chunk of contacts at a time (the server writes one chunk while the next is
planned), and a write the server refuses still refused as such."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from profilehook.errors import StoreRefused
from tests.support import (
    POSTGRES_URL,
    drop_schema,
    event,
    postgres_url,
    require_server,
    unique_schema,
)

COLUMNS = [
    ["a", "é", "x\U0001f600", ""],
    ["a", None, ""],
    ["1", '{"a": [1, 2.50]}', None, '"x"'],
    [1, None, -5, 2**63 - 1, -(2**63)],
    [1, 2, 3],
    [b"\x00\xff", None, b""],
    [b"ab"],
    [None, None],
    [],
    [True, False],
    [1.5, 2.0],
    [2**63],
    ["a", 1],
]
CASTS = ("text[]", "bigint[]", "bytea[]", "json[]")


def _answer(conn: Any, cast: str, value: Any) -> tuple[str, Any]:
    import psycopg

    try:
        with conn.transaction():
            return "ok", conn.execute(f"SELECT %b::{cast}", (value,)).fetchone()[0]
    except psycopg.Error as exc:
        return "refused", type(exc)


@pytest.mark.parametrize("values", COLUMNS, ids=repr)
def test_a_column_as_an_array_reads_back_as_psycopgs_own_list_does(values: list[Any]) -> None:
    """Whatever the cast, the server answers the one-pass array as it answers psycopg's list
    (the same values, or the same refusal)."""
    require_server(POSTGRES_URL, 5432)
    import psycopg

    from profilehook.stores import pg_arrays
    from profilehook.stores.postgres import _ADAPTERS

    with psycopg.connect(POSTGRES_URL, autocommit=True, context=_ADAPTERS) as conn:
        for cast in CASTS:
            found = _answer(conn, cast, pg_arrays.array(list(values)))
            assert found == _answer(conn, cast, list(values)), (cast, values)


def test_columns_of_str_int_and_bytes_are_encoded_here_and_the_rest_left_to_psycopg() -> None:
    from profilehook.stores import pg_arrays

    rows = [("w", 1, b"x", 1.5), ("w", None, None, 2.5)]
    text, numbers, blobs, floats = pg_arrays.columns(rows, 4)
    assert [type(c) for c in (text, numbers, blobs)] == [pg_arrays.Array] * 3
    assert (text.oid, numbers.oid, blobs.oid) == (
        pg_arrays.TEXT_ARRAY,
        pg_arrays.INT8_ARRAY,
        pg_arrays.BYTEA_ARRAY,
    )
    assert floats == [1.5, 2.5]
    assert pg_arrays.columns([], 2) == [[], []]


async def test_an_apply_writes_its_contacts_a_chunk_at_a_time_in_pipeline_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk's writes are sent, in pipeline mode, before the next chunk is planned; what
    the batch leaves is what one statement per kind of write left."""
    require_server(POSTGRES_URL, 5432)
    import psycopg

    from profilehook.stores import postgres
    from profilehook.stores.postgres import PostgresStore

    monkeypatch.setattr(postgres, "_WRITE_CHUNK_CONTACTS", 3)
    steps: list[tuple[str, bool]] = []
    execute, plan = psycopg.AsyncConnection.execute, postgres.plan_contact

    async def noting(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, str) and "INSERT INTO properties" in query:
            piped = self.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF
            steps.append(("write", piped))
        return await execute(self, query, *args, **kwargs)

    def planning(*args: Any) -> Any:
        steps.append(("plan", True))
        return plan(*args)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", noting)
    monkeypatch.setattr(postgres, "plan_contact", planning)
    schema = unique_schema()
    store = PostgresStore(postgres_url(schema))
    await store.open()
    try:
        batch = [event(f"c{i}", f"e{i}", ts_us=1_000 + i, a=i, b=str(i)) for i in range(8)]
        assert (await store.apply(batch)).applied == 8
        assert [kind for kind, _ in steps] == ["plan"] * 3 + ["write"] + ["plan"] * 3 + [
            "write"
        ] + ["plan"] * 2 + ["write"]
        assert all(piped for _, piped in steps)
        for i in range(8):
            contact = await store.get_contact("acme", f"c{i}")
            assert contact is not None and contact.properties == {"a": i, "b": str(i)}
        changes = await store.read_changes("acme", None, 100)
        assert sorted(c.contact_id for c in changes) == sorted(f"c{i}" for i in range(8))
    finally:
        await store.close()
        drop_schema(schema)


@pytest.mark.slow
async def test_a_pipelined_write_the_server_refuses_is_refused_and_the_store_goes_on() -> None:
    """A property name over the B-tree entry's limit fails in the properties' upsert, whose
    answer the apply does not wait for: it still surfaces as ``StoreRefused`` (the data, not an
    outage), nothing of the batch is kept, and the next apply works."""
    require_server(POSTGRES_URL, 5432)
    from profilehook.stores.postgres import PostgresStore

    schema = unique_schema()
    store = PostgresStore(postgres_url(schema))
    await store.open()
    try:
        name = base64.b64encode(os.urandom(3_000)).decode()  # random: it does not compress
        with pytest.raises(StoreRefused):
            await store.apply([event("c", "e-1", **{name: 1}), event("d", "e-2", a=1)])
        assert await store.get_event("acme", "e-2") is None
        assert (await store.apply([event("d", "e-3", a=2)])).applied == 1
        found = await store.get_contact("acme", "d")
        assert found is not None and found.properties == {"a": 2}
    finally:
        await store.close()
        drop_schema(schema)


def test_without_the_driver_the_store_still_says_what_to_install() -> None:
    """The arrays' module loads psycopg only when the store registers it: importing the store
    without the driver still ends in the message, not in a bare ImportError."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from profilehook.errors import ConfigurationError\n"
        "try:\n"
        "    import profilehook.stores.postgres\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'profilehook[postgres]'" in found.stdout, found.stderr
