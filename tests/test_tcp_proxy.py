"""The fault-test proxy does what its modes say (tests/tcp_proxy.py), against an echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.tcp_proxy import TcpProxy

SILENCE_S = 0.3
ANSWER_S = 5.0  # generous: the machine may be busy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with TcpProxy("127.0.0.1", server.server_address[1]) as proxy:
            yield proxy
    finally:
        server.shutdown()
        server.server_close()


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=ANSWER_S)


def echoes(sock: socket.socket, within_s: float = ANSWER_S) -> bool:
    sock.settimeout(within_s)
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except TimeoutError:
        return False


def silent(sock: socket.socket) -> bool:
    """No echo within ``SILENCE_S`` (and no reset either: that would raise)."""
    return not echoes(sock, SILENCE_S)


def test_pass_forwards_both_ways(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert echoes(sock)


def test_refuse_resets_open_connections_and_refuses_new_ones_until_pass(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert echoes(sock)
        proxy.set_mode("refuse")
        assert reset_seen(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.set_mode("pass")
    with connect(proxy) as sock:
        assert echoes(sock)


def test_blackhole_accepts_new_connections_and_never_answers_them(proxy: TcpProxy) -> None:
    with connect(proxy) as before:
        assert echoes(before)  # open: the proxy has taken it on
        proxy.set_mode("blackhole")
        with connect(proxy) as sock:
            assert silent(sock)
        assert echoes(before)  # an open connection goes on


def test_freeze_silences_open_connections_without_a_reset_and_they_stay_dead(
    proxy: TcpProxy,
) -> None:
    with connect(proxy) as sock:
        assert echoes(sock)
        proxy.set_mode("freeze")
        assert silent(sock)  # no answer, and no reset either
        proxy.set_mode("pass")
        assert silent(sock)
        with connect(proxy) as fresh:
            assert echoes(fresh)


def test_one_connection_is_frozen_or_reset_by_its_upstream_port(proxy: TcpProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        assert echoes(first) and echoes(second)
        ports = proxy.upstream_ports()
        assert len(ports) == 2
        proxy.freeze_connection(ports[0])
        # Which client that was, the echo server cannot tell: the frozen one stops answering.
        alive = second if silent(first) else first
        assert echoes(alive)
        proxy.reset_connection(ports[1])
        assert reset_seen(alive)


def reset_seen(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b""
    except ConnectionError:
        return True
