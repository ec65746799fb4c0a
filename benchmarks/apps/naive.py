"""B: the naive baseline. FastAPI + Pydantic, one synchronous=FULL SQLite commit per request."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

DB_PATH = os.environ.get("NAIVE_DB", "naive.sqlite3")
_local = threading.local()


def db() -> sqlite3.Connection:
    if not hasattr(_local, "conn"):
        conn = sqlite3.connect(DB_PATH, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT, body TEXT)")
        _local.conn = conn
    conn: sqlite3.Connection = _local.conn
    return conn


class PropertyUpdate(BaseModel):
    contact_id: str
    event_name: str
    timestamp: float
    event_id: str | None = None
    user_properties: dict[str, Any]
    metadata: dict[str, Any] | None = None


app = FastAPI()


@app.post("/v1/properties", status_code=202)
def ingest(update: PropertyUpdate, authorization: str = Header("")) -> dict[str, str]:
    if not authorization.startswith("Bearer "):
        raise HTTPException(401, "Invalid API Key")
    event_id = update.event_id or str(uuid.uuid4())
    db().execute("INSERT INTO events VALUES (?, ?)", (event_id, update.model_dump_json()))
    return {"status": "accepted", "event_id": event_id}
