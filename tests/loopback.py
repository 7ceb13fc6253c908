"""Small real servers on loopback for unit tests: a TCP listener running a handler per
connection, and an SSH server (paramiko's server side) that offers a given host key."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import paramiko


@contextlib.contextmanager
def listener(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback TCP server running ``handler(conn)`` for each connection; its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        server.close()
        thread.join(5)


def ssh_handshake(host_key: paramiko.PKey) -> Callable[[socket.socket], None]:
    """A connection handler that completes an SSH handshake offering ``host_key``."""

    def handshake(conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            transport.start_server(server=paramiko.ServerInterface())
            transport.accept(5)
        transport.close()

    return handshake


@contextlib.contextmanager
def ssh_server(host_key: paramiko.PKey) -> Iterator[int]:
    """A loopback SSH server offering ``host_key`` (handshake only); its port."""
    with listener(ssh_handshake(host_key)) as port:
        yield port


def free_loopback_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
