"""The configuration client never sends a management call through a proxy: an
``http_proxy`` meant for the internet would receive the admin token (and every
deployed model's code).  A real server, and a listening socket standing for the
proxy that records whoever connects to it."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.server.conftest import Running


def test_management_calls_go_straight_to_the_server(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def record() -> None:
        while True:
            try:
                client, _ = proxy.accept()
            except OSError:
                return  # closed
            with client:
                client.settimeout(5)
                seen.append(client.recv(65536))
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, address)
    try:
        running.conn.register_application("app", "doubles", "-1", 100_000)
        assert running.conn.get_all_apps() == ["app"]
        assert running.conn.ping()
        assert "apps" in running.conn.inspect_instance()
    finally:
        proxy.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        proxy.close()
        thread.join(5)
    assert seen == []
