"""Defaults and fixed values, in one place. Units are in the names."""

from __future__ import annotations

# Native API limits (RELIABILITY.md, Limits).
MAX_SINGLE_BODY_BYTES = 256 * 1024
MAX_BATCH_BODY_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1_000
MAX_COPERNICA_BODY_BYTES = 64 * 1024
MAX_AMPLITUDE_BODY_BYTES = 8 * 1024 * 1024
MAX_PROPERTIES_PER_EVENT = 1_000
MAX_PROPERTY_NAME_CHARS = 256
MAX_CONTACT_ID_CHARS = 512
MAX_EVENT_ID_CHARS = 256
# Ids are index keys: PostgreSQL refuses an index row over 2,704 bytes, so ids are also capped
# in UTF-8 bytes (workspace + contact_id + event_id must fit with room to spare).
MAX_CONTACT_ID_BYTES = 1_024
MAX_EVENT_ID_BYTES = 512
MAX_JSON_DEPTH = 32
# A webhook body over this is decoded and turned into events in a thread, a piece at a time,
# not on the event loop every request shares (an 8 MiB Amplitude body is seconds of work).
OFF_LOOP_BODY_BYTES = 256 * 1024
# Integers a JSON consumer holds exactly (I-JSON, RFC 7493: JavaScript's safe integers).
MAX_JSON_INT = 2**53 - 1

# A timestamp at or above this is read as milliseconds (README, Sending updates).
MILLISECONDS_THRESHOLD = 1e11
# Event times must fall between the epoch and the end of year 9999.
MAX_EVENT_TIME_S = 253_402_300_799

# Applier.
APPLY_BATCH_MAX_EVENTS = 2_000
APPLY_IDLE_WAIT_S = 0.2
# After a partial batch the applier waits before fetching again (applier.py, linger_s): this
# many times as long as the batch took, within these bounds.
APPLY_LINGER_PER_BUSY = 2.0
APPLY_LINGER_MIN_S = 0.01
APPLY_LINGER_MAX_S = 0.15
ACK_INTERVAL_S = 0.25  # applied events are synced in the store and acknowledged this often
APPLY_RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 5.0)

# Answers to clients when a backend is down.
RETRY_AFTER_S = 1
# A backend that has not answered a request's key lookup or append by then is answered 503
# (checked every 0.1 s, so the answer comes within 1 s).
BACKEND_TIMEOUT_S = 0.7
# A request of many events (a batch, a webhook) has this much longer for each event past the
# first, at most BACKEND_TIMEOUT_EXTRA_MAX_S more: storing 10,000 takes longer than one, and a
# stored request must not be answered 503. (Pipelined NATS publishes cost 20-70 us an event.)
BACKEND_TIMEOUT_PER_EVENT_S = 0.0002
BACKEND_TIMEOUT_EXTRA_MAX_S = 5.0
# At start-up, a networked log (NATS) that does not answer is retried, with backoff, this long.
CONNECT_TIMEOUT_S = 30.0
# /readyz reports a failed durable write for this long, unless a write succeeds first.
READY_FAILURE_HOLD_S = 10.0

# Rate limit per API key and per webhook source (RELIABILITY.md, Rate limits): a token bucket.
RATE_LIMIT_PER_S = 1_000
RATE_LIMIT_BURST = 2_000

# Slow clients (RELIABILITY.md, Slow clients): the request line and headers, then the body, must arrive in time.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this
# A request line and headers larger than this get 431 and the connection is closed (they are
# held in memory until complete: without a cap, one connection could fill it within the
# header deadline). Checked per read, so up to one read (256 KiB) more may be held.
MAX_HEAD_BYTES = 64 * 1024
# A connection closed after an answer given before its request's body was all read (a 401 on
# the head, say) is half-closed and what the client still sends is read and dropped, until it
# closes or this long has passed: closed at once, the rest of the body would meet a reset,
# which can destroy the answer before the client reads it.
LINGER_S = 2.0

# History retention (PROFILEHOOK_HISTORY_RETENTION_DAYS; README, Retention): the applier purges
# what is older than the window in batches of this many events, each its own short transaction,
# so applying never waits long behind one; caught up, it looks again after the interval. One log
# line sums what was purged, at most once per PURGE_LOG_INTERVAL_S.
DAY_US = 86_400 * 1_000_000
# An event_id is recognised as a repeat for at least this long after it was accepted (README,
# Retention): the purge keeps this much more history than the window, so that an event
# accepted at the window's edge, then re-delivered or applied late, is still known.
DEDUPE_WINDOW_US = 7 * DAY_US
PURGE_BATCH_EVENTS = 1_000
PURGE_INTERVAL_S = 10.0
PURGE_PAUSE_S = 0.05  # between two full batches, for the applier's writes
PURGE_LOG_INTERVAL_S = 60.0
CHANGES_RETENTION_DAYS = 7  # how long the change feed keeps a change

HISTORY_PAGE_DEFAULT = 50
HISTORY_PAGE_MAX = 500

KEY_PREFIX = "phk_"
DEFAULT_WORKSPACE = "default"
# Key scopes (README, Access and privacy): what each key may do; ``admin`` implies the others.
SCOPE_INGEST, SCOPE_READ, SCOPE_ADMIN = "ingest", "read", "admin"
SCOPES = (SCOPE_INGEST, SCOPE_READ, SCOPE_ADMIN)
DEFAULT_KEY_SCOPES = (SCOPE_INGEST, SCOPE_READ)  # `keys create` without --scope

# Copernica webhooks (README, Copernica (sub)profiles; RELIABILITY.md, Limits).
FORM_MAX_FIELDS = 1_000
FORM_MAX_DEPTH = 4
COPERNICA_MAX_CLOCK_SKEW_S = 300
COPERNICA_DNS_TIMEOUT_S = 2.0

# Objects allocated between two collections of the youngest generation (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000

# PostgreSQL connections (scale-out): what a store outage or a dead connection may cost.
# A key or source learned from PostgreSQL keeps working this long after the store last proved
# it current (a live LISTEN connection proves every cached answer): through an outage, and
# bounding how late a revocation is seen while notifications do not arrive.
AUTH_CACHE_MAX_STALE_S = 30.0
# One store transaction may take this long (PostgreSQL's statement and idle-in-transaction
# timeouts); a connection that has not answered by then is cut (no server may hold an applier).
STORE_TIMEOUT_S = 15.0
PG_CONNECT_TIMEOUT_S = 5
PG_OPEN_WAIT_S = 5.0  # start-up waits this long for PostgreSQL, then serves 503s until it answers
PG_RETRY_S = 1.0  # between attempts to reach PostgreSQL (migrations, the LISTEN connection)
# TCP keepalives and the kernel's limit on unacknowledged data: a peer that vanished (host down,
# network cut) is noticed within ~10 s even on an idle connection.
PG_KEEPALIVES_IDLE_S = 5
PG_KEEPALIVES_INTERVAL_S = 2
PG_KEEPALIVES_COUNT = 3
PG_TCP_USER_TIMEOUT_MS = 10_000
PG_POOL_CHECK_TIMEOUT_S = 1.0  # a pooled connection is checked (one round trip) before use
LISTEN_PING_INTERVAL_S = 5.0  # the LISTEN connection proves itself alive this often
LISTEN_PING_MIN_INTERVAL_S = 0.5
LISTEN_PING_TIMEOUT_S = 2.0
# /readyz fails when the applier applied nothing for this long while events were pending.
APPLIER_STALL_S = 30.0

# SDK-compatible endpoints (README, Speaking the SDKs you already use): each peer's own limits.
SEGMENT_MAX_MESSAGE_BYTES = 32 * 1024
SEGMENT_MAX_BATCH_BYTES = 500 * 1024
# posthog-python keeps a batch under 5 MiB plus one event of up to 8 MiB, under PostHog's 20 MiB.
POSTHOG_MAX_BODY_BYTES = 20 * 1024 * 1024
# Amplitude's Batch API takes 20 MB a request (HTTP V2: 1 MB; the SDK splits on a 413).
AMPLITUDE_HTTP_MAX_BODY_BYTES = 20 * 1024 * 1024

# The console (console/) and its live tail (live.py)
LIVE_BODY_MAX_BYTES = 16 * 1024  # of each call's body kept for the tail and copy-as-curl
LIVE_RECENT_PER_SOURCE = 20  # webhook calls a source's page shows
LIVE_IDS_MAX = 100  # event and contact ids a call keeps (a cohort call may make 10,000 events)
LIVE_WATCHER_BACKLOG = 1_000  # calls a slow tail may fall behind before it loses the oldest
# Scaled out (live_nats.py): a process with an open tail says so this often over core NATS;
# the others post their calls while they heard it within the last LIVE_INTEREST_TTL_S.
LIVE_INTEREST_EVERY_S = 2.0
LIVE_INTEREST_TTL_S = 6.0
LIVE_FANOUT_BACKLOG = 10_000  # calls waiting to go out to NATS before the newest are dropped
CONSOLE_SESSION_S = 12 * 3600  # a console sign-in lasts this long (or until its key is revoked)
CONSOLE_SAMPLE_INTERVAL_S = 10.0  # the overview's charts: one point per interval...
CONSOLE_SAMPLES_KEPT = 360  # ...over the last hour

# Querying profiles (README, Querying profiles)
QUERY_PAGE_DEFAULT = 100
QUERY_PAGE_MAX = 1_000
MAX_FILTER_CONDITIONS = 100
MAX_FILTER_DEPTH = 8  # levels of all/any/not
MAX_FILTER_LIST_ITEMS = 1_000  # the values of one in/not_in
MAX_SEGMENTS_PER_WORKSPACE = 1_000
MAX_SEGMENT_NAME_CHARS = 256

# The change feed's pull (README, Getting changes out)
CHANGES_PAGE_DEFAULT = 500
CHANGES_PAGE_MAX = 1_000
CHANGES_WAIT_MAX_S = 60  # the longest long-poll a GET /v1/changes may ask for (wait_s)
CHANGES_POLL_S = 0.05  # how often a waiting reader looks for new changes
CHANGES_MARK_POLL_S = 0.005  # ...or, on a store with a feed_mark, at that mark (a memory read)
CHANGES_STREAM_KEEPALIVE_S = 15.0  # an SSE comment line this often while nothing happens

# Destinations (README, Getting changes out)
MAX_DESTINATIONS_PER_WORKSPACE = 50
MAX_DESTINATION_DESCRIPTION_CHARS = 1_000
MAX_DESTINATION_FILTER_NAMES = 100
DESTINATION_TIMEOUT_S = 10.0  # a delivery attempt answered later has failed
# The waits before each retry (then the delivery is failed); each gets up to 20% jitter.
DESTINATION_RETRY_S = (5.0, 300.0, 1_800.0, 7_200.0, 18_000.0, 36_000.0, 36_000.0)
DESTINATION_RETRY_JITTER = 0.2
DESTINATION_DISABLE_AFTER_S = 5 * 86_400.0  # failing this long in a row: disabled
DESTINATION_LEASE_S = (
    20.0  # a claimed delivery is another worker's again after this (2 x the timeout)
)
DESTINATION_CLAIM_BATCH = 500
DESTINATION_FILL_BATCH = 2_000  # changes read from the feed per destination per pass
DESTINATION_CONCURRENCY = 128  # calls in flight per delivering process
DESTINATION_CONNECTIONS = 32  # keep-alive connections per destination, per delivering process
DESTINATION_CONNECTION_IDLE_S = 30.0  # an idle connection older than this is not reused
DESTINATION_MAX_ANSWER_BYTES = 65_536  # a longer answer's body is not read: not reused
# An idle delivery loop is woken by the applier's commits (same process); it also looks this
# often, for changes applied elsewhere (other workers) and retries coming due.
DESTINATION_POLL_S = 0.25
