"""Shared pieces of the `mcpfw serve` tests: tokens, configs, a running firewall, a raw client."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import jwt
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from mcpfw.config import load_config
from mcpfw.proxy.http_front import HttpFirewall
from mcpfw.proxy.http_serve import bind_socket, open_http_firewall, uvicorn_server

FIXTURE = Path(__file__).with_name("http_upstream_fixture.py")
SECRET = "mcpfw-test-secret-0123456789abcdef"
ISSUER = "https://idp.test"
AUDIENCE = "mcpfw-test"
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}

RULES = """\
default: deny
rules:
  - id: ci-read
    effect: allow
    agents: ["ci-*"]
    tools: [echo, read_file, progress, seen, slow]
  - id: admin-all
    effect: allow
    agents: ["boss", "root*"]
    when: '"admin" in agent.roles'
  - id: ask-delete
    effect: ask
    tools: [delete_file, confirm]
  - id: no-secrets
    effect: deny
    when: 'has(args.path) && args.path.endsWith(".pem")'
    message: secrets are never read by agents
"""


def token(
    sub: str,
    roles: tuple[str, ...] = (),
    *,
    exp_in: float = 600,
    key: Any = SECRET,
    alg: str = "HS256",
    **claims: Any,
) -> str:
    """A signed JWT for this firewall (override claims to break it)."""
    body: dict[str, Any] = {
        "sub": sub,
        "roles": list(roles),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": int(time.time() + exp_in),
        "iat": int(time.time()),
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm=alg)


def stdio_upstream() -> str:
    return json.dumps({"command": sys.executable, "args": [str(FIXTURE)]})


def write_config(
    tmp_path: Path,
    *,
    upstreams: dict[str, str] | None = None,
    rules: str = RULES,
    auth: str | None = None,
    extra: str = "",
) -> Path:
    """An mcpfw.yaml (and rules file) in tmp_path; upstreams are YAML flow mappings."""
    (tmp_path / "rules.yaml").write_text(rules)
    ups = upstreams or {"fs": stdio_upstream()}
    auth = auth or (
        f"    jwt: {{secret: {SECRET}, issuer: '{ISSUER}', audience: {AUDIENCE}}}\n"
        "    api_keys:\n"
        # sha256("ci-key-1")
        "      - {sha256: " + _sha("ci-key-1") + ", agent: ci-apikey, roles: [ci]}\n"
    )
    text = (
        "rules: rules.yaml\n"
        f"audit: {{url: {tmp_path / 'audit.db'}}}\n"
        "upstreams:\n"
        + "".join(f"  {name}: {spec}\n" for name, spec in ups.items())
        + "server:\n  auth:\n"
        + auth
        + extra
    )
    path = tmp_path / "mcpfw.yaml"
    path.write_text(text)
    return path


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Served:
    url: str
    firewall: HttpFirewall

    def mcp(self, server: str = "") -> str:
        return f"{self.url}/mcp/{server}" if server else f"{self.url}/mcp"


@asynccontextmanager
async def serving(
    config_path: Path, *, audit_url: str | None = None, instance: str | None = None
) -> AsyncIterator[Served]:
    """`mcpfw serve` on a free loopback port, in this event loop."""
    config = load_config(config_path)
    async with open_http_firewall(
        config, audit_url=audit_url, instance=instance, reload_interval_s=0.05
    ) as firewall:
        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = uvicorn_server(firewall.app())
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield Served(url=f"http://127.0.0.1:{port}", firewall=firewall)
            finally:
                server.should_exit = True


class Rpc:
    """A raw JSON-RPC client over HTTP: exactly what goes on the wire, nothing hidden."""

    def __init__(self, http: httpx.AsyncClient, url: str, bearer: str | None) -> None:
        self.http, self.url = http, url
        self.headers = {"accept": "application/json, text/event-stream"}
        if bearer is not None:
            self.headers["authorization"] = f"Bearer {bearer}"
        self.ids = 0

    async def post(self, body: Any, **headers: str) -> httpx.Response:
        return await self.http.post(self.url, json=body, headers={**self.headers, **headers})

    async def initialize(self, capabilities: dict[str, Any] | None = None) -> str:
        response = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": capabilities or {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        )
        assert "result" in response, response
        return self.headers["mcp-session-id"]

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.ids += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.ids, "method": method}
        if params is not None:
            body["params"] = params
        response = await self.post(body)
        if "mcp-session-id" in response.headers:
            self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        return last_message(response)

    async def modern(self, method: str, params: dict[str, Any], name: str | None = None) -> Any:
        self.ids += 1
        params = {**params, "_meta": {**ENVELOPE, **params.get("_meta", {})}}
        headers = {"mcp-protocol-version": MODERN, "mcp-method": method}
        if name is not None:
            headers["mcp-name"] = name
        body = {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}
        return await self.post(body, **headers)


def last_message(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a JSON or SSE response."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])  # type: ignore[no-any-return]
    return response.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def sdk_client(url: str, bearer: str, **kwargs: Any) -> AsyncIterator[Client]:
    """The MCP SDK's own client over streamable HTTP with a bearer token."""
    headers = {"Authorization": f"Bearer {bearer}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, cache=None, **kwargs) as client:
            yield client


def tool_text(result: Any) -> Any:
    """The JSON a fixture tool answered (the first text content)."""
    return json.loads(result.content[0].text)
