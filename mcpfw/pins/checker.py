"""The runtime side of pinning: one `PinChecker` per upstream server connection.

The relay hands it every `tools/list` result (and tells it about `tools/list_changed`); it
scans the tools, compares them with the pins, records new pins and drift, and returns the
result to pass on to the client (descriptions sanitised; under `pins: block`, drifted tools
removed so their new text never reaches the model). The guard asks it about every
`tools/call`: a verdict that either denies (block mode) or carries the finding codes the
rules see as `tool.findings`.

Fails closed: under `block`, a pin store that cannot be read or written, or a tool whose
definition was never verified, means the call is denied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from mcpfw.pins.canonical import canonical_definition, canonical_json
from mcpfw.pins.drift import PinMode, PinStatus
from mcpfw.pins.errors import PinStoreError
from mcpfw.pins.sanitize import sanitize_tools
from mcpfw.pins.scanner import Finding, finding_codes, scan_tools

if TYPE_CHECKING:
    from mcpfw.pins.store import PinStore

__all__ = ["PinChecker", "PinOptions", "PinVerdict"]

log = logging.getLogger("mcpfw.pins")

# Extra codes in `tool.findings` beside the scanner's, describing the pin itself.
_STATUS_CODES = {
    PinStatus.DRIFTED: "pin-drift",
    PinStatus.UNAPPROVED: "pin-unapproved",
    PinStatus.DUPLICATE: "pin-duplicate",
}
UNVERIFIED = "pin-unverified"
SURROGATE = "lone-surrogate"  # text no database can store: never verified, denied under block
_UNLISTED_MAX = 1024  # names remembered as not listed upstream (a flood evicts the oldest)

_REASONS = {
    PinStatus.DRIFTED: "its definition changed since it was approved (possible rug pull)",
    PinStatus.UNAPPROVED: (
        "its definition has not been approved (it appeared after the server's tools were first "
        "pinned, or trust on first use is off)"
    ),
    PinStatus.DUPLICATE: "the server lists it twice with different definitions",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class PinOptions:
    """How pinning behaves (from `pins:` and `sanitize_descriptions:` in mcpfw.yaml)."""

    mode: PinMode = PinMode.WARN
    sanitize: bool = True  # strip ANSI/control/invisible characters from descriptions
    # pin the tools of a server's first listing; False: every tool needs `mcpfw pins approve`
    trust_on_first_use: bool = True
    refresh_timeout_s: float = 10.0  # bound on re-listing the upstream's tools ourselves
    store_timeout_s: float = 5.0  # bound on the pin store (a locked database): then unverified
    unlisted_ttl_s: float = 5.0  # how long "not listed upstream" spares a call the re-list


@dataclass(frozen=True, kw_only=True, slots=True)
class PinVerdict:
    """What pinning says about one `tools/call`."""

    allowed: bool
    findings: tuple[str, ...] = ()  # for ToolCall.findings (scanner codes + pin-* codes)
    reason: str = ""  # why it is denied (or flagged), for the Decision and the denial text
    status: str = ""  # PinStatus value, or "unverified"


@dataclass(frozen=True, kw_only=True, slots=True)
class _ToolState:
    status: PinStatus | None  # None: could not be compared with its pin (store failed)
    codes: tuple[str, ...]
    findings: tuple[Finding, ...]


class PinChecker:
    """Pins and scans the tools of one upstream server; judges calls to them."""

    def __init__(
        self,
        server: str,
        *,
        store: PinStore | None,
        options: PinOptions | None = None,
        refresh: Callable[[], Awaitable[Sequence[Mapping[str, Any]]]] | None = None,
        foreign_tools: Collection[str] = (),
    ) -> None:
        self.server = server
        self.store = store
        self.options = options or PinOptions()
        self.refresh = refresh  # lists the upstream's tools (all pages) without the client
        self.foreign_tools = foreign_tools  # tool names of other servers (shadowing checks)
        self._tools: dict[str, _ToolState] = {}
        self._stale = False
        self._lock = anyio.Lock()
        self._logged: set[tuple[str, str, str, str]] = set()
        # tools a re-list confirmed the upstream does not list -> (expiry, verdict); cleared by
        # every tools/list result and list_changed, so calls to them skip re-list and store
        self._unlisted: dict[str, tuple[float, PinVerdict]] = {}

    @property
    def pinning(self) -> bool:
        """Whether definitions are compared with pins at all."""
        return self.options.mode is not PinMode.OFF

    def tool_names(self) -> set[str]:
        """The tools of this server's latest listings."""
        return set(self._tools)

    def findings(self, tool: str) -> tuple[Finding, ...]:
        """The scanner's findings on a tool's latest listed definition."""
        state = self._tools.get(tool)
        return state.findings if state else ()

    async def on_tools_list(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Check one `tools/list` result; return the result to pass on to the client.

        Never raises: an internal failure leaves every listed tool unverified (hidden under
        `block`, passed on and flagged under `warn`).
        """
        try:
            return await self._on_tools_list(result)
        except Exception:  # boundary: the relay's upstream pump must survive a pins bug
            log.exception("pins: server %r: cannot check a tools/list result", self.server)
            tools = result.get("tools")
            listed = tools if isinstance(tools, list) else []
            names = [t.get("name") for t in listed if isinstance(t, Mapping)]
            for name in names:
                if isinstance(name, str):
                    self._tools[name] = _ToolState(status=None, codes=(UNVERIFIED,), findings=())
            if self.options.mode is PinMode.BLOCK:
                return {**result, "tools": [t for t in listed if not isinstance(t, Mapping)]}
            return dict(result)

    async def _on_tools_list(self, result: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(result)
        tools = result.get("tools")
        if not isinstance(tools, list):
            return out
        listed = [t for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)]
        found = scan_tools(listed, foreign_tools=self.foreign_tools)
        bad = {str(t["name"]) for t in listed if _has_lone_surrogate(t)}
        statuses: dict[str, PinStatus | None] = {}
        async with self._lock:
            if self.pinning:
                for name in sorted(bad):
                    log.error(
                        "pins: server %r: tool %a has a lone surrogate (malformed Unicode) in "
                        "its definition; it cannot be pinned and stays unverified",
                        self.server,
                        name,
                    )
                storable = [t for t in listed if str(t["name"]) not in bad]
                try:
                    if self.store is None:
                        raise PinStoreError("no pin store (the audit database is unavailable)")
                    with anyio.fail_after(self.options.store_timeout_s):
                        checks = await self.store.observe(
                            self.server,
                            storable,
                            findings=found,
                            trust_on_first_use=self.options.trust_on_first_use,
                        )
                    statuses = {c.tool: c.status for c in checks}
                    statuses.update({name: None for name in bad})
                except TimeoutError:
                    log.error("pins: server %r: the pin store did not answer in time", self.server)
                    statuses = {str(t["name"]): None for t in listed}
                except PinStoreError as exc:
                    log.error("pins: server %r: %s (tools unverified)", self.server, exc)
                    statuses = {str(t["name"]): None for t in listed}
            else:
                statuses = {str(t["name"]): PinStatus.PINNED for t in listed}
            for name, status in statuses.items():
                codes = set(finding_codes(found.get(name, ())))
                if name in bad:
                    codes.add(SURROGATE)
                if status is None:
                    codes.add(UNVERIFIED)
                elif status in _STATUS_CODES:
                    codes.add(_STATUS_CODES[status])
                self._tools[name] = _ToolState(
                    status=status, codes=tuple(sorted(codes)), findings=found.get(name, ())
                )
            self._stale = False
            self._unlisted.clear()
        self._log(statuses, found)
        passed: list[Any] = tools
        if self.options.mode is PinMode.BLOCK and self.pinning:
            passed = [
                t
                for t in tools
                if not isinstance(t, Mapping) or not self._blocked(statuses.get(str(t.get("name"))))
            ]
        if self.options.sanitize:
            passed, _ = sanitize_tools(passed)
        out["tools"] = passed
        return out

    def on_list_changed(self) -> None:
        """The upstream said its tools changed: what we verified may be stale."""
        self._stale = True
        self._unlisted.clear()

    async def check_call(self, tool: str) -> PinVerdict:
        """The pin verdict on a call to `tool` (never raises)."""
        try:
            return await self._check_call(tool)
        except Exception:  # boundary: a pins bug must not crash the call; fail closed
            log.exception("pins: server %r: cannot check a call to %r", self.server, tool)
            return PinVerdict(
                allowed=self.options.mode is not PinMode.BLOCK,
                findings=(UNVERIFIED,),
                reason="its definition could not be checked (internal error, see the log)",
                status="unverified",
            )

    async def _check_call(self, tool: str) -> PinVerdict:
        state = self._tools.get(tool)
        block = self.options.mode is PinMode.BLOCK
        can_refresh = self.refresh is not None and self.pinning
        relisted = False
        if state is None and not self._stale:
            cached = self._unlisted.get(tool)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]  # a re-list just showed it is not listed: same verdict
        if can_refresh and (
            state is None or self._stale or (block and self._blocked(state.status))
        ):
            # unknown or possibly changed; or blocked, and a human may have approved it since
            relisted = await self._refresh()
            state = self._tools.get(tool)
        if not self.pinning:
            return PinVerdict(allowed=True, findings=state.codes if state else ())
        if state is None:
            verdict = await self._verdict_from_store(tool)
            if relisted and not self._stale:
                self._remember_unlisted(tool, verdict)
            return verdict
        if state.status is None:
            return PinVerdict(
                allowed=not block,
                findings=state.codes,
                reason="its definition could not be checked against the pin store",
                status="unverified",
            )
        if self._blocked(state.status):
            return PinVerdict(
                allowed=not block,
                findings=state.codes,
                reason=self._reason(tool, state.status),
                status=str(state.status),
            )
        return PinVerdict(allowed=True, findings=state.codes, status=str(state.status))

    async def _refresh(self) -> bool:
        """Re-list the upstream's tools and check them; whether the listing arrived."""
        assert self.refresh is not None
        try:
            with anyio.fail_after(self.options.refresh_timeout_s):
                tools = await self.refresh()
        except (TimeoutError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            log.error("pins: server %r: cannot re-list tools: %s", self.server, exc or "timeout")
            return False
        unlisted = dict(self._unlisted)
        await self.on_tools_list({"tools": list(tools)})  # clears what we knew as unlisted
        if not self._stale:  # our own listing: what it does not list stays known as unlisted
            for name, entry in unlisted.items():
                if name not in self._tools:
                    self._unlisted.setdefault(name, entry)
        return True

    def _remember_unlisted(self, tool: str, verdict: PinVerdict) -> None:
        """Spare further calls to a tool the upstream does not list the re-list (bounded)."""
        if self.options.unlisted_ttl_s <= 0:
            return
        if len(self._unlisted) >= _UNLISTED_MAX:
            self._unlisted.pop(next(iter(self._unlisted)))  # the oldest entry
        self._unlisted[tool] = (time.monotonic() + self.options.unlisted_ttl_s, verdict)

    async def _verdict_from_store(self, tool: str) -> PinVerdict:
        """A call to a tool not listed in this session: judge by what the store knows."""
        block = self.options.mode is PinMode.BLOCK
        if _has_lone_surrogate({"name": tool}):
            return PinVerdict(
                allowed=not block,
                findings=(SURROGATE, UNVERIFIED),
                reason="its name has a lone surrogate (malformed Unicode) and cannot be pinned",
                status="unverified",
            )
        try:
            if self.store is None:
                raise PinStoreError("no pin store (the audit database is unavailable)")
            with anyio.fail_after(self.options.store_timeout_s):
                pin = await self.store.pin(self.server, tool)
        except TimeoutError:
            log.error("pins: server %r: the pin store did not answer in time", self.server)
            pin = None
        except PinStoreError as exc:
            log.error("pins: server %r: %s", self.server, exc)
            pin = None
        if pin is None or pin.status is not PinStatus.PINNED:
            status = pin.status if pin is not None else None
            reason = (
                self._reason(tool, status)
                if status is not None
                else "its definition has not been seen in a tools/list result yet"
            )
            codes: tuple[str, ...] = (
                (_STATUS_CODES[status],) if status in _STATUS_CODES else (UNVERIFIED,)
            )
            return PinVerdict(
                allowed=not block, findings=codes, reason=reason, status=str(status or "unverified")
            )
        stored = tuple(sorted({str(f.get("code")) for f in pin.findings if f.get("code")}))
        return PinVerdict(allowed=True, findings=stored, status=str(pin.status))

    def _blocked(self, status: PinStatus | None) -> bool:
        return status is None or status in _STATUS_CODES

    def _reason(self, tool: str, status: PinStatus) -> str:
        what = _REASONS.get(status, str(status))
        return (
            f"tool {tool!r} of server {self.server!r}: {what}; review it with "
            f"`mcpfw pins diff {self.server} {tool}` and accept it with "
            f"`mcpfw pins approve {self.server} {tool}`"
        )

    def _log(
        self, statuses: Mapping[str, PinStatus | None], found: Mapping[str, Sequence[Finding]]
    ) -> None:
        for name, status in sorted(statuses.items(), key=lambda kv: kv[0]):
            if status in _STATUS_CODES:
                assert status is not None
                log.warning("pins: %s", self._reason(name, status))
        for name, findings in sorted(found.items()):
            for f in findings:
                key = (name, f.code, f.where, f.excerpt)
                if key in self._logged:
                    continue  # said once per process; the pin store keeps them all
                self._logged.add(key)
                log.warning(
                    "pins: server %r tool %r: %s finding %s at %s: %s",
                    self.server,
                    name,
                    f.severity,
                    f.code,
                    f.where or "/",
                    f.excerpt,
                )


def _has_lone_surrogate(tool: Mapping[str, Any]) -> bool:
    """Whether a definition holds text no UTF-8 database can store (e.g. JSON "\\ud800")."""
    try:
        canonical_json(canonical_definition(tool)).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
