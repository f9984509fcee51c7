"""The API's HTTP server: connections answer without waiting on Nagle's algorithm."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx

from services.api.app import create_api_server
from tests.support.settings import platform_settings


async def test_accepted_connections_have_tcp_nodelay(tmp_path: Path, nats_server: Any) -> None:
    # Without TCP_NODELAY a reply's body waits for the client's delayed ACK of its head
    # (40 ms after an upload); asyncio sets it only on sockets created as IPPROTO_TCP.
    settings = platform_settings(tmp_path, nats_url=nats_server.url)
    async with (
        create_api_server(settings) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api.port}") as client,
    ):
        await client.get("/healthz")  # any answer: the connection is what is looked at
        connections = list(server.server_state.connections)
        assert connections
        for conn in connections:
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
