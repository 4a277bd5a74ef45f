"""Request hygiene for `mcpfw serve`, applied before any MCP message is looked at.

- Host and Origin validation against DNS rebinding: a web page on another origin must not be
  able to drive a firewall listening on loopback through the user's browser.
- Body size limit (413) and a read timeout for slow senders (408).
- A JSON nesting limit (deeply nested input is refused before it reaches the policy engine).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio

__all__ = [
    "BadRequest",
    "OriginPolicy",
    "json_depth",
    "read_json_body",
]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class BadRequest(Exception):
    """A request refused at the HTTP layer; carries its status and JSON-RPC error code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> str:
    """The host part of a `Host` header value (`[::1]:8000` → `::1`)."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass(frozen=True, kw_only=True)
class OriginPolicy:
    """Which `Host` and `Origin` values the firewall accepts.

    - `Origin` absent (every non-browser MCP client): accepted.
    - `Origin` present: must be listed in `allowed_origins`; with none configured only
      loopback origins (`http://localhost:*`, `http://127.0.0.1:*`) are accepted.
    - `Host` (checked when bound to loopback, or when `public_url` is set): must be a loopback
      name or the public URL's host, so a rebound DNS name pointing at 127.0.0.1 is refused.
    """

    bind_host: str
    allowed_origins: tuple[str, ...] = ()
    public_url: str | None = None

    @classmethod
    def build(
        cls, bind_host: str, allowed_origins: Iterable[str], public_url: str | None
    ) -> OriginPolicy:
        return cls(
            bind_host=bind_host,
            allowed_origins=tuple(o.rstrip("/") for o in allowed_origins),
            public_url=public_url,
        )

    def check(self, host_header: str | None, origin: str | None) -> None:
        """Raise BadRequest(403) when the Host or Origin is not acceptable."""
        if host_header is not None and not self._host_ok(_split_host(host_header.lower())):
            raise BadRequest(403, -32600, f"Host {host_header!r} is not accepted (DNS rebinding)")
        if origin is None:
            return
        origin = origin.rstrip("/")
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return
        if not self.allowed_origins and _is_loopback(urlsplit(origin).hostname or ""):
            return
        raise BadRequest(
            403, -32600, f"Origin {origin!r} is not allowed (add it to server.allowed_origins)"
        )

    def _host_ok(self, host: str) -> bool:
        public = urlsplit(self.public_url).hostname if self.public_url else None
        if public is not None and host == public.lower():
            return True
        if _is_loopback(self.bind_host):
            return _is_loopback(host)
        if public is not None:
            return _is_loopback(host) or host == self.bind_host.lower()
        return True


class BodySource(Protocol):
    """A request whose body can be streamed (Starlette's Request, or the route's own)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def stream(self) -> AsyncIterator[bytes]: ...


async def read_json_body(
    request: BodySource, *, max_bytes: int, max_depth: int, timeout_s: float
) -> Any:
    """The decoded JSON body, or BadRequest (413 too large, 408 too slow, 400 unparsable)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, -32600, f"request body over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(timeout_s) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BadRequest(413, -32600, f"request body over {max_bytes} bytes")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise BadRequest(408, -32600, f"request body not received within {timeout_s:g}s")
    try:
        decoded = json.loads(b"".join(chunks))
    except RecursionError:
        raise BadRequest(400, -32600, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:
        raise BadRequest(400, -32700, "Parse error: the body is not valid JSON") from None
    if json_depth(decoded, limit=max_depth) > max_depth:
        raise BadRequest(400, -32600, f"JSON nested deeper than {max_depth} levels")
    return decoded


def json_depth(value: Any, *, limit: int) -> int:
    """Nesting depth of a decoded JSON value (scalars 0), stopping once past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest
