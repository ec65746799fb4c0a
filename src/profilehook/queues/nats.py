"""NATS JetStream log, for the scale-out configuration (many `serve`, many `worker`).

One work-queue stream holds the events not yet applied: a 2xx is sent only after the PubAck
(the stream stored the event), and every applier pulls from one shared durable consumer.
Messages carry no ``Nats-Msg-Id``: a re-sent event reaches the store, which applies an event_id
once and marks the repeat (status ``duplicate``), as the embedded log does; JetStream's own
dedupe would drop it unseen within its window, so its status would depend on the timing. Each event has its own subject,
``<prefix>.<digest of workspace and event_id>.<digest of workspace and contact_id>``, so that a
pending event can be looked up directly (``find``) and a contact's pending events found for an
erasure (``erase_pending``); acknowledged events leave the stream. Events published by earlier
versions have the subject ``<prefix>.<event digest>``: still found, and consumed alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import msgspec

from profilehook.errors import ConfigurationError, StorageUnavailable
from profilehook.events import Event, decode_event, encode_event, predates
from profilehook.queues.base import Delivery, Queue
from profilehook.queues.nats_version import require_supported_server

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js import api
except ImportError as exc:  # pragma: no cover - exercised by the missing-driver test
    raise ConfigurationError("NATS needs its driver: pip install 'profilehook[nats]'") from exc

log = logging.getLogger(__name__)

STREAM = "PROFILEHOOK_EVENTS"
SUBJECT_PREFIX = "profilehook.events"
CONSUMER = "appliers"
# Unused by profilehook (its messages carry no Nats-Msg-Id), kept so that existing streams
# need no update.
DUPLICATE_WINDOW_S = 120.0
PUBLISH_TIMEOUT_S = 5.0
# An import's batches may be large; a webhook's are also bounded by the request's deadline.
PUBLISH_TIMEOUT_PER_EVENT_S = 0.001
# The messages of requests published within this long of each other are written to the server
# together, one write after the first of them: the stream leader then replicates them in fewer,
# larger batches (benchmarks/README.md, scenario H). An idle request waits this much longer.
PUBLISH_LINGER_S = 0.001
# How often the publishes waiting for their PubAcks are checked against their deadlines: one
# sweep for all of them, cheaper than a timer per request (benchmarks/README.md, scenario H).
PUBLISH_SWEEP_S = 0.1
# The first step is also how long a worker has to apply and acknowledge a batch before
# JetStream hands it to another worker (a 2,000-event batch takes ~0.2 s here).
REDELIVERY_BACKOFF_S = [5.0, 15.0, 30.0, 60.0, 120.0]
# ``?ack_wait_s=N`` in the queue URL sets that first step (the later ones keep their ratios to
# it); the tests use a short one so that a killed worker's batches come back sooner.
ACK_WAIT_OPTION = "ack_wait_s"
MAX_DELIVER = 1_000
CONNECT_TIMEOUT_S = 2  # seconds: one TCP connect and handshake with one server
# Start-up: the waits between attempts to reach any of the servers, the last one repeated,
# for as long as the ``connect_timeout_s`` setting allows.
CONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 5.0)
RECONNECT_WAIT_S = 0.5  # once connected, between nats-py's own reconnection attempts
ERROR_LOG_INTERVAL_S = 10.0
# A fetch that finds nothing cannot tell an empty stream from a deleted consumer (it just
# waits): an idle consumer asks the server this often whether its consumer still exists.
FETCH_NO_RESPONDERS_RETRIES = 3
FETCH_NO_RESPONDERS_WAIT_S = 0.1
CONSUMER_CHECK_INTERVAL_S = 5.0  # a connection's repeated errors are logged at most this often
MAX_REPLICAS = 5  # JetStream's own limit

# What publishing to a subject no stream holds gives (the stream was deleted).
NO_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
)
NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    nats.js.errors.Error,
    TimeoutError,
    OSError,
)


def split_url(url: str) -> tuple[str, str, int | None]:
    """``nats://a:4222[,nats://b:4222…]?stream=NAME&replicas=N`` -> (server URL(s), stream
    name, replicas).

    The stream defaults to PROFILEHOOK_EVENTS; replicas to None (create with 1, and leave an
    existing stream's count as it is). Raises ``ConfigurationError`` for a bad ``replicas``
    or an empty server in the list.
    """
    servers, _, query_string = url.partition("?")
    if not all(server.strip() for server in servers.split(",")):
        raise ConfigurationError(
            f"PROFILEHOOK_QUEUE_URL={url!r}: name servers as nats://a:4222,nats://b:4222"
        )
    query = parse_qsl(query_string, keep_blank_values=True)
    options = dict(query)
    stream = options.get("stream", STREAM)
    replicas = None
    if "replicas" in options:
        raw = options["replicas"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_REPLICAS:
            raise ConfigurationError(
                f"PROFILEHOOK_QUEUE_URL: replicas={raw!r} must be a number from 1 to {MAX_REPLICAS}"
            )
        replicas = int(raw)
    rest = urlencode([(k, v) for k, v in query if k not in ("stream", "replicas", ACK_WAIT_OPTION)])
    return (f"{servers}?{rest}" if rest else servers), stream, replicas


def redelivery_backoff_s(url: str) -> list[float]:
    """``REDELIVERY_BACKOFF_S``, or its steps scaled so that the first is the URL's
    ``ack_wait_s``. Raises ``ConfigurationError`` for an ``ack_wait_s`` that is not a
    positive number."""
    raw = dict(parse_qsl(url.partition("?")[2], keep_blank_values=True)).get(ACK_WAIT_OPTION)
    if raw is None:
        return list(REDELIVERY_BACKOFF_S)
    try:
        ack_wait_s = float(raw)
    except ValueError:
        ack_wait_s = 0.0
    if not 0 < ack_wait_s < float("inf"):
        raise ConfigurationError(
            f"PROFILEHOOK_QUEUE_URL: {ACK_WAIT_OPTION}={raw!r} must be a positive number of seconds"
        )
    scale = ack_wait_s / REDELIVERY_BACKOFF_S[0]
    return [step_s * scale for step_s in REDELIVERY_BACKOFF_S]


def server_list(url: str) -> list[str]:
    """The servers of ``split_url``'s first part, each with the options that followed."""
    servers, _, rest = url.partition("?")
    return [server.strip() + (f"?{rest}" if rest else "") for server in servers.split(",")]


async def set_stream_replicas(url: str, replicas: int, connect_timeout_s: float) -> int:
    """``profilehook streams set-replicas``: give the stream of ``url`` ``replicas`` copies
    (creating it if need be); returns the number it had. Raises as ``NatsQueue.set_replicas``."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigurationError(f"replicas must be a number from 1 to {MAX_REPLICAS}")
    queue = NatsQueue(url, connect_timeout_s=connect_timeout_s)
    queue.replicas = None  # the URL's count may be the one being left behind: no check
    await queue.open()
    try:
        return await queue.set_replicas(replicas)
    finally:
        await queue.close()


def publish_timeout_s(events: int) -> float:
    """How long a publish of ``events`` messages may take before it is given up: the
    single-message timeout, plus a per-message allowance for large requests."""
    return PUBLISH_TIMEOUT_S + events * PUBLISH_TIMEOUT_PER_EVENT_S


async def _fetch_answered(sub: Any, max_events: int, timeout_s: float) -> list[Any]:
    """``sub.fetch``, tried again a few times while no server answers it (a 503): on a cluster
    a consumer just created is known to the other nodes only a moment later (their routes
    learn its subscription), and the first fetch of a new worker would fail."""
    for _ in range(FETCH_NO_RESPONDERS_RETRIES):
        with contextlib.suppress(nats.js.errors.ServiceUnavailableError):
            return list(await sub.fetch(batch=max_events, timeout=timeout_s))
        await asyncio.sleep(FETCH_NO_RESPONDERS_WAIT_S)
    return list(await sub.fetch(batch=max_events, timeout=timeout_s))


def _digest(workspace: str, name: str) -> str:
    data = f"{workspace}\x00{name}".encode(errors="surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


class _ConnectionErrors:
    """nats-py's callbacks: one log line per problem instead of its traceback every 0.5 s."""

    def __init__(self) -> None:
        self.last: BaseException | None = None
        self.connected = False
        self.client: Any = None
        self._logged_s = -ERROR_LOG_INTERVAL_S

    async def seen(self, error: Exception) -> None:
        self.last = error
        # While connecting, ``open`` logs each attempt; once connected, a server that stays
        # away is logged now and then, not at every reconnection attempt.
        now_s = time.monotonic()
        if self.connected and now_s - self._logged_s >= ERROR_LOG_INTERVAL_S:
            self._logged_s = now_s
            log.warning("NATS: %s", _describe(error))

    async def disconnected(self) -> None:
        if self.connected and self.client is not None and not self.client.is_closed:
            log.warning("NATS connection lost; reconnecting")

    async def reconnected(self) -> None:
        log.warning("NATS reconnected")


class _PubAcks:
    """The PubAcks of the publishes in flight, counted per publish.

    All of one publish's messages name the same reply subject, and one subscription receives
    every PubAck: a publish costs one future, where ``publish_async`` costs a future, a token,
    a semaphore slot and a parsed PubAck per message (twice the CPU per event, measured).
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._waiting: dict[bytes, _Publish] = {}
        self._count = 0
        self._sweeper: asyncio.Task[None] | None = None

    def expect(self, messages: int, timeout_s: float) -> tuple[bytes, _Publish]:
        """A reply subject for ``messages`` messages, and what completes when all are stored
        or fails with ``TimeoutError`` when they are not within ``timeout_s``."""
        self._count += 1
        reply = b"%s.%d" % (self.prefix.encode(), self._count)
        loop = asyncio.get_running_loop()
        waiting = self._waiting[reply] = _Publish(messages, loop.time() + timeout_s)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return reply, waiting

    async def _sweep(self) -> None:
        """While publishes wait: fail those past their deadline."""
        try:
            while self._waiting:
                await asyncio.sleep(PUBLISH_SWEEP_S)
                now_s = asyncio.get_running_loop().time()
                for waiting in list(self._waiting.values()):
                    if waiting.deadline_s <= now_s and not waiting.stored.done():
                        waiting.stored.set_exception(TimeoutError())
        finally:
            self._sweeper = None

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def forget(self, reply: bytes) -> None:
        self._waiting.pop(reply, None)

    def received(self, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """One PubAck, as the client parsed it (``_Client``): ``headers`` are the raw header
        block, present only on a status message."""
        waiting = self._waiting.get(reply)
        if waiting is None or waiting.stored.done():
            return  # a publish given up (its request timed out): nobody waits for it
        if headers:
            # "NATS/1.0 503": no responders, no stream holds the subject (it was deleted).
            waiting.stored.set_exception(
                nats.js.errors.NoStreamResponseError()
                if headers[9:12] == b"503"
                else nats.js.errors.Error(f"PubAck status {headers[:40]!r}")
            )
            return
        error = _pub_ack_error(data)
        if error is not None:
            waiting.stored.set_exception(error)
            return
        waiting.acked += 1
        if waiting.acked == waiting.messages:
            waiting.stored.set_result(None)


class _Client(Client):
    """nats-py's client, except that the PubAcks of profilehook's publishes are counted as the
    parser hands them over: for a subscription, nats-py would build a ``Msg`` (decoding its
    subjects and headers) and pass it through a queue to a task of its own, per message."""

    pubacks: _PubAcks | None = None
    pubacks_sid = -1

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        if sid == self.pubacks_sid and self.pubacks is not None:
            self.pubacks.received(subject, data, headers)
            return
        await super()._process_msg(sid, subject, reply, data, headers)


class _Publish:
    __slots__ = ("acked", "deadline_s", "messages", "stored")

    def __init__(self, messages: int, deadline_s: float) -> None:
        self.messages = messages
        self.deadline_s = deadline_s  # on the event loop's clock
        self.acked = 0
        self.stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()


def _pub_ack_error(data: bytes) -> Exception | None:
    """The error a PubAck reports (``{"error": {"code", "description", …}}``), if any."""
    if b'"error"' not in data:  # (the common case, without decoding)
        return None
    try:
        error = msgspec.json.decode(data).get("error")
    except (msgspec.DecodeError, AttributeError):
        return nats.js.errors.Error(f"unreadable PubAck {data[:200]!r}")
    if not isinstance(error, dict):
        return None
    return nats.js.errors.APIError(
        code=error.get("code"),
        description=error.get("description"),
        err_code=error.get("err_code"),
    )


class NatsQueue(Queue):
    def __init__(
        self, url: str, replicas: int | None = None, connect_timeout_s: float = 0.0
    ) -> None:
        """``connect_timeout_s``: how long ``open`` keeps trying to reach a server (0: once)."""
        self.url, self.stream, url_replicas = split_url(url)
        self.redelivery_backoff_s = redelivery_backoff_s(url)
        self.connect_timeout_s = max(connect_timeout_s, 0.0)
        # Streams may not share subjects, so each stream has its own subject space.
        self.subject_prefix = f"{SUBJECT_PREFIX}.{self.stream.lower()}"
        self.replicas = replicas if replicas is not None else url_replicas
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._acks = _PubAcks("")
        self._consumer_checked_s = 0.0
        self._flush_scheduled = False

    async def open(self) -> None:
        """Connect (retrying for up to ``connect_timeout_s``) and check the stream.

        Raises ``StorageUnavailable`` when no server answered in that time, and
        ``ConfigurationError`` for a stream that cannot serve. Cancellation stops it at once.
        """
        started_s = time.monotonic()
        servers = server_list(self.url)
        try:
            self._nc = await self._keep_trying(
                started_s,
                lambda remaining_s: self._connect_once(servers, remaining_s),
                f"NATS unreachable at {self.url}",
                "is the server running?",
            )
            require_supported_server(self._nc._server_info.get("version", ""), self.url)
            self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
            # A JetStream cluster that is (re)starting takes connections before its API
            # answers (no meta leader yet): start-up waits for it as it waits for a server.
            await self._keep_trying(
                started_s,
                lambda _remaining_s: self._ensure_stream(),
                f"NATS JetStream at {self.url} did not answer",
                "does a majority of its cluster run?",
            )
            self._acks = _PubAcks(self._nc.new_inbox())
            # Its messages never reach the subscription's queue: _Client hands them over.
            sub = await self._nc.subscribe(f"{self._acks.prefix}.*")
            self._nc.pubacks, self._nc.pubacks_sid = self._acks, sub._id
        except ConfigurationError:
            await self.close()
            raise
        except NATS_ERRORS as exc:
            await self.close()
            raise StorageUnavailable(f"NATS unreachable at {self.url}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def _keep_trying(
        self,
        started_s: float,
        attempt: Callable[[float], Awaitable[Any]],
        failure: str,
        hint: str,
    ) -> Any:
        """``await attempt(remaining_s)`` until it returns, retried with backoff while NATS
        errors come and ``connect_timeout_s`` since ``started_s`` has not passed, with one log
        line per failed attempt; then ``StorageUnavailable`` says ``failure`` and ``hint``."""
        for tries in range(1, 1_000_000):
            remaining_s = started_s + self.connect_timeout_s - time.monotonic()
            try:
                return await attempt(max(remaining_s, CONNECT_TIMEOUT_S))
            except NATS_ERRORS as exc:
                error = exc
            wait_s = CONNECT_BACKOFF_S[min(tries, len(CONNECT_BACKOFF_S)) - 1]
            remaining_s = started_s + self.connect_timeout_s - time.monotonic()
            if remaining_s <= 0:
                break
            wait_s = min(wait_s, remaining_s)
            log.warning(
                "%s (%s); attempt %d, next in %.1f s, giving up in %.1f s",
                failure,
                _describe(error),
                tries,
                wait_s,
                remaining_s,
            )
            await asyncio.sleep(wait_s)
        raise StorageUnavailable(
            f"{failure} after {tries} attempt(s) in {time.monotonic() - started_s:.0f} s "
            f"({_describe(error)}); {hint} "
            "(PROFILEHOOK_CONNECT_TIMEOUT_S sets how long to keep trying)"
        ) from error

    async def _connect_once(self, servers: list[str], timeout_s: float) -> Any:
        """One pass over the servers (each tried at most twice); a connection that then
        reconnects by itself, without end, if it is lost."""
        client = _Client()
        errors = _ConnectionErrors()
        errors.client = client
        try:
            async with asyncio.timeout(timeout_s):
                # max_reconnect_attempts=1 bounds nats-py's own loop over the servers to this
                # pass (with -1 it would try forever, and start-up would hang on a dead server).
                await client.connect(
                    servers,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=errors.seen,
                    disconnected_cb=errors.disconnected,
                    reconnected_cb=errors.reconnected,
                )
        except asyncio.CancelledError:
            await client.close()
            raise
        except Exception:
            await client.close()
            if errors.last is not None:  # more telling than the TimeoutError of the pass
                raise errors.last from None
            raise
        # Connected: from now on a lost connection is retried for as long as it takes.
        client.options["max_reconnect_attempts"] = -1
        client.options["reconnect_time_wait"] = RECONNECT_WAIT_S
        errors.connected = True
        return client

    async def _ensure_stream(self) -> None:
        """Create the stream, or verify that the existing one has the settings we rely on.

        Raises ``ConfigurationError`` when the server refuses the stream's settings (such as
        replicas > 1 on a server that is not clustered) or a stream of that name is not a
        work queue.
        """
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self._configure_stream(
                self._js.add_stream,
                api.StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.subject_prefix}.>"],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    duplicate_window=DUPLICATE_WINDOW_S,
                    num_replicas=self.replicas or 1,
                    allow_direct=True,
                ),
            )
            return
        config = info.config
        if config.retention != api.RetentionPolicy.WORK_QUEUE:
            raise ConfigurationError(
                f"NATS stream {self.stream} exists with retention {config.retention}; "
                "profilehook needs a work-queue stream: delete it or choose another name"
            )
        if self.replicas is not None and self.replicas != config.num_replicas:
            # Changing the copies of a live stream is an operator's decision: a process started
            # with an old URL must not quietly downgrade (or raise) it.
            raise ConfigurationError(
                f"NATS stream {self.stream} has {config.num_replicas} replica(s) but the queue "
                f"URL asks for {self.replicas}; profilehook does not change them by itself. To "
                f"change them: profilehook streams set-replicas {self.replicas}; to keep them: "
                f"replicas={config.num_replicas} (or no replicas=) in PROFILEHOOK_QUEUE_URL"
            )
        # Only what profilehook relies on is changed; an operator's other settings stay.
        wanted = dataclasses.replace(
            config, subjects=[f"{self.subject_prefix}.>"], duplicate_window=DUPLICATE_WINDOW_S
        )
        if (wanted.subjects, wanted.duplicate_window) != (config.subjects, config.duplicate_window):
            await self._configure_stream(self._js.update_stream, wanted)

    async def set_replicas(self, replicas: int) -> int:
        """Change the (open) stream's number of copies; returns the number it had.

        Raises ``ConfigurationError`` when the server refuses (fewer servers than copies) and
        ``StorageUnavailable`` when it does not answer.
        """
        js = self._connected()
        try:
            config = (await js.stream_info(self.stream)).config
        except NATS_ERRORS as exc:
            raise StorageUnavailable(f"NATS unreachable ({exc!r})") from exc
        before = int(config.num_replicas)
        if before != replicas:
            wanted = dataclasses.replace(config, num_replicas=replicas)
            try:
                await self._configure_stream(js.update_stream, wanted)
            except NATS_ERRORS as exc:
                raise StorageUnavailable(f"NATS did not answer ({exc!r})") from exc
        return before

    async def _recreate_stream(self) -> None:
        """``_ensure_stream`` for a running process: a stream it cannot use is an outage (503,
        the applier retries), not a configuration error that ends it."""
        try:
            await self._ensure_stream()
        except ConfigurationError as exc:
            raise StorageUnavailable(str(exc.detail)) from exc

    async def _configure_stream(self, call: Any, config: Any) -> None:
        try:
            await call(config)
        except nats.js.errors.APIError as exc:
            # 503 (no quorum, not enough peers yet) may pass: it stays StorageUnavailable.
            if exc.err_code is None or isinstance(exc, nats.js.errors.ServiceUnavailableError):
                raise
            raise ConfigurationError(
                f"NATS refused stream {self.stream} (replicas={config.num_replicas}): "
                f"{exc.description}"
            ) from exc

    async def close(self) -> None:
        self._acks.close()
        if self._nc is not None:
            # Publishes were awaited to their PubAck and acks flushed: nothing is in flight.
            await self._nc.close()
            self._nc = self._js = self._sub = None

    async def publish(self, events: Sequence[Event]) -> None:
        """Store ``events`` in the stream; return once JetStream acknowledged every one.

        All of a request's messages are written before any PubAck is awaited, so a request
        costs about one round trip whatever its size, bounded by
        ``publish_timeout_s(len(events))``; the messages of requests published within
        ``PUBLISH_LINGER_S`` of each other go out in one write. (Not
        ``publish_async(..., wait_stall=...)``: it yields to the event loop once per message,
        and the client then writes each message alone; benchmarks/README.md.)

        Raises ``StorageUnavailable`` when not every event was acknowledged in time; some may
        have been stored (a retry with the same event_ids is deduplicated).
        """
        if not events:
            return  # nothing to store (awaiting no PubAck would only time out)
        try:
            try:
                await self._publish(events)
            except NO_STREAM_ERRORS:
                # The stream was deleted under this running process: create it as start-up
                # would, and publish again (none was stored: there was no stream to take it).
                log.warning("NATS stream %s is gone; creating it again", self.stream)
                await self._recreate_stream()
                await self._publish(events)
        except NATS_ERRORS as exc:
            raise StorageUnavailable(
                f"NATS did not store the event ({_describe(exc)}), retry later"
            ) from exc

    async def _publish(self, events: Sequence[Event]) -> None:
        nc = self._connected_client()
        timeout_s = publish_timeout_s(len(events))
        reply, waiting = self._acks.expect(len(events), timeout_s)
        try:
            # The PUB commands go straight into the client's write buffer, as its ``publish``
            # puts them, but without waking its flusher for each request.
            size = 0
            for e in events:
                data = encode_event(e)
                command = b"PUB %s %s %d\r\n%s\r\n" % (
                    self._subject(e.workspace, e.event_id, e.contact_id).encode(),
                    reply,
                    len(data),
                    data,
                )
                nc._pending.append(command)
                size += len(command)
            nc._pending_data_size += size
            if nc._pending_data_size > nc._max_pending_size:
                async with asyncio.timeout(timeout_s):  # (rare: over 2 MiB waiting)
                    await nc._flush_pending(force_flush=True)  # as ``publish`` would
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(PUBLISH_LINGER_S, self._flush_later)
            await waiting.stored  # or TimeoutError at its deadline (``_PubAcks``)
        finally:
            self._acks.forget(reply)

    def _flush_later(self) -> None:
        """Wake the client's flusher (it writes out the whole buffer), unless it is awake."""
        self._flush_scheduled = False
        queue = None if self._nc is None else self._nc._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())

    async def fetch(self, max_events: int, wait_s: float) -> list[Delivery]:
        # Disconnected, a fetch would only time out like an empty stream: say so instead, so
        # that the applier backs off (and logs) as for any outage.
        self._connected()
        try:
            sub = await self._subscription()
            messages = await _fetch_answered(sub, max_events, max(wait_s, 0.05))
        except (TimeoutError, nats.errors.TimeoutError):
            await self._check_consumer()
            return []
        except nats.js.errors.ServiceUnavailableError as exc:
            # On a cluster a deleted consumer does not time out: its fetch has no responders.
            await self._check_consumer()
            raise StorageUnavailable(f"NATS fetch failed ({exc!r})") from exc
        except NATS_ERRORS as exc:
            raise StorageUnavailable(f"NATS fetch failed ({exc!r})") from exc
        deliveries = []
        for message in messages:
            try:
                deliveries.append(Delivery(decode_event(message.data), message))
            except ValueError as exc:  # msgspec errors: not an event at all; nothing to apply
                log.error("dropping undecodable message %s: %s", message.subject, exc)
                await message.term()
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge ``deliveries``; raises ``StorageUnavailable`` when that is not known to
        have reached the server, and the same deliveries may be acknowledged again.

        Each ack is published to its message's reply subject, not with ``Msg.ack()``: nats-py
        marks a message acknowledged once the ack is in its buffer, and refuses to send it
        again. After a flush that failed (the connection to the worker's node was lost), every
        later attempt failed on the first such message, and the worker acknowledged nothing
        again while the consumer redelivered the applied events for ever (RELIABILITY.md). A
        repeated ack is harmless: the consumer ignores an ack for a message it no longer holds.
        """
        nc = self._connected_client()
        try:
            for delivery in deliveries:
                await nc.publish(delivery.token.reply)
            await nc.flush(timeout=PUBLISH_TIMEOUT_S)
        except NATS_ERRORS as exc:
            # Unacknowledged events come again; the store's dedupe makes that harmless.
            raise StorageUnavailable(f"NATS ack failed ({exc!r})") from exc

    async def find(self, workspace: str, event_id: str) -> Event | None:
        js = self._connected()
        subject = self._subject(workspace, event_id)
        for layout in (f"{subject}.*", subject):  # this version's subjects, then older ones
            try:
                raw = await js.get_last_msg(self.stream, layout)
            except nats.js.errors.NotFoundError:
                continue
            except NATS_ERRORS as exc:
                raise StorageUnavailable(f"NATS lookup failed ({exc!r})") from exc
            event = decode_event(raw.data)
            if (event.workspace, event.event_id) == (workspace, event_id):
                return event
        return None

    async def erase_pending(
        self, workspace: str, contact_id: str, upto_us: int, everything: bool = False
    ) -> int:
        """Deletes them from the stream with JetStream's secure delete (the message's bytes
        are overwritten in the stream's files). Events published by a version before subjects
        named the contact cannot be found this way: the store drops them when they are
        applied."""
        js = self._connected()
        subject = f"{self.subject_prefix}.*.{_digest(workspace, contact_id)}"
        erased, seq = 0, 1
        try:
            while True:
                try:
                    raw = await js.get_msg(self.stream, seq=seq, subject=subject, next=True)
                except nats.js.errors.NotFoundError:
                    return erased
                seq = raw.seq + 1
                event = decode_event(raw.data)
                if (event.workspace, event.contact_id) == (workspace, contact_id) and (
                    everything or predates(event, upto_us)
                ):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await js.delete_msg(self.stream, raw.seq)  # (acknowledged meanwhile)
                    erased += 1
        except NATS_ERRORS as exc:
            raise StorageUnavailable(f"NATS erasure failed ({exc!r})") from exc

    async def depth(self) -> int:
        js = self._connected()
        try:
            info = await js.stream_info(self.stream)
        except NATS_ERRORS as exc:
            raise StorageUnavailable(f"NATS unreachable ({exc!r})") from exc
        return int(info.state.messages)

    def _subject(self, workspace: str, event_id: str, contact_id: str | None = None) -> str:
        """An event's subject; without ``contact_id``, its first part (the subject of events
        published before subjects named the contact)."""
        subject = f"{self.subject_prefix}.{_digest(workspace, event_id)}"
        return subject if contact_id is None else f"{subject}.{_digest(workspace, contact_id)}"

    def _connected_client(self) -> Any:
        self._connected()
        return self._nc

    def _connected(self) -> Any:
        if self._js is None or self._nc is None or not self._nc.is_connected:
            raise StorageUnavailable("NATS is not connected, retry later")
        return self._js

    async def _subscription(self) -> Any:
        if self._sub is None:
            config = api.ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                max_deliver=MAX_DELIVER,
                backoff=self.redelivery_backoff_s,
                max_ack_pending=20_000,
            )
            self._sub = await self._connected().pull_subscribe(
                f"{self.subject_prefix}.>", durable=CONSUMER, stream=self.stream, config=config
            )
            self._consumer_checked_s = time.monotonic()
        return self._sub

    async def _check_consumer(self) -> None:
        """Every ``CONSUMER_CHECK_INTERVAL_S`` while idle: if the consumer is gone (its stream
        was deleted, and maybe created again), create the stream if need be and subscribe
        anew; otherwise this worker would wait on a consumer that no longer exists, forever.

        Raises ``StorageUnavailable`` when NATS does not answer."""
        now_s = time.monotonic()
        if self._sub is None or now_s - self._consumer_checked_s < CONSUMER_CHECK_INTERVAL_S:
            return
        self._consumer_checked_s = now_s
        try:
            try:
                await self._connected().consumer_info(self.stream, CONSUMER)
                return
            except nats.js.errors.NotFoundError:
                log.warning(
                    "NATS consumer %s of stream %s is gone (was the stream deleted?); "
                    "creating it again",
                    CONSUMER,
                    self.stream,
                )
            sub, self._sub = self._sub, None
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()
            await self._recreate_stream()
            await self._subscription()
        except NATS_ERRORS as exc:
            raise StorageUnavailable(f"NATS consumer check failed ({exc!r})") from exc
