"""The SSH connection tuning every deploy and the fleet's state callback apply (run/connection.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from pyinfra_ratos.run import connection


def _host(sock: socket.socket | None, active: bool = True) -> SimpleNamespace:
    """pyinfra's Host as ``tune`` reaches it: ``host.connector.client.get_transport().sock``."""
    transport = SimpleNamespace(sock=sock, active=active)
    return SimpleNamespace(connector=SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport)))


def test_a_tcp_connection_gets_nodelay_and_a_one_second_idle_poll() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as sock:
        sock.settimeout(0.1)  # paramiko's own poll
        assert connection.tune(_host(sock)) is True
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.gettimeout() == connection.IDLE_POLL_S
        sock.settimeout(5.0)  # a longer timeout someone chose is kept
        connection.tune(_host(sock))
        assert sock.gettimeout() == 5.0


def test_a_blocking_socket_or_a_closed_transport_keeps_its_timeout() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as sock:
        sock.settimeout(None)
        connection.tune(_host(sock))
        assert sock.gettimeout() is None
        sock.settimeout(0.1)
        connection.tune(_host(sock, active=False))
        assert sock.gettimeout() == 0.1


def test_hosts_without_a_tcp_connection_are_left_alone() -> None:
    assert connection.tune(SimpleNamespace()) is False  # the local connector: no client
    assert connection.tune(_host(None)) is False
    left, right = socket.socketpair()
    with left, right:
        assert connection.tune(_host(left)) is False  # not TCP
