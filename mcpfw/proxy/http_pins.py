"""Tool pinning for `mcpfw serve`: one `PinChecker` per shared upstream.

Each checker stores its pins through the firewall's audit store, hears the upstream's
`notifications/tools/list_changed` as a subscriber of the shared connection, and re-lists the
upstream's tools itself when a call arrives for a tool whose definition may have changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mcpfw.proxy.shared_upstream import Raw, SharedUpstream

if TYPE_CHECKING:
    from mcpfw.config import Config
    from mcpfw.pins.checker import PinChecker

__all__ = ["pin_checkers"]

_MAX_PAGES = 100


class _NoAgent:
    """The downstream of the firewall's own tools/list: nobody to route anything to."""

    route_key: object = object()

    def notify(self, message: Raw) -> None:
        return None

    async def client_request(self, method: str, params: Raw | None) -> Raw:
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": "no agent"}}


class _ListChanged:
    """Subscriber that marks a checker stale when its upstream's tools change."""

    def __init__(self, checker: PinChecker) -> None:
        self.checker = checker

    def broadcast(self, server: str, message: Raw) -> None:
        if message.get("method") == "notifications/tools/list_changed":
            self.checker.on_list_changed()

    def subscribed(self, server: str, uri: str) -> bool:
        return False


def _lister(upstream: SharedUpstream) -> Any:
    async def list_tools() -> Sequence[Mapping[str, Any]]:
        tools: list[Mapping[str, Any]] = []
        params: Raw | None = None
        for _ in range(_MAX_PAGES):
            response = await upstream.request("tools/list", params, _NoAgent())
            result = response.get("result")
            if not isinstance(result, dict):
                raise OSError(f"upstream {upstream.name!r} did not list its tools")
            page = result.get("tools")
            if isinstance(page, list):
                tools.extend(t for t in page if isinstance(t, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return tools
            params = {"cursor": cursor}
        raise OSError(f"upstream {upstream.name!r}: more than {_MAX_PAGES} pages of tools")

    return list_tools


def pin_checkers(
    config: Config, store: Any, upstreams: Mapping[str, SharedUpstream]
) -> dict[str, PinChecker]:
    """A checker per upstream, storing pins in `store.engine` (None: pins unavailable)."""
    from mcpfw.pins.checker import PinChecker, PinOptions
    from mcpfw.pins.drift import PinMode
    from mcpfw.pins.store import PinStore

    engine = getattr(store, "engine", None)
    options = PinOptions(
        mode=PinMode(config.pins),
        sanitize=config.sanitize_descriptions,
        trust_on_first_use=config.pins_trust_on_first_use,
    )
    checkers: dict[str, PinChecker] = {}
    for name, upstream in upstreams.items():
        checker = PinChecker(
            name,
            store=PinStore(engine) if engine is not None else None,
            options=options,
            refresh=_lister(upstream),
            foreign_tools=(),
        )
        upstream.subscribe(_ListChanged(checker))
        checkers[name] = checker
    for name, checker in checkers.items():
        # tools of the other upstreams served by this firewall (shadowing checks)
        checker.foreign_tools = _OtherTools(checkers, name)
    return checkers


class _OtherTools:
    """The tool names the other checkers have seen, as a live collection."""

    def __init__(self, checkers: Mapping[str, PinChecker], own: str) -> None:
        self.checkers = checkers
        self.own = own

    def _names(self) -> set[str]:
        return {
            tool
            for name, checker in self.checkers.items()
            if name != self.own
            for tool in checker.tool_names()
        }

    def __contains__(self, item: object) -> bool:
        return item in self._names()

    def __iter__(self) -> Any:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())
