"""The guard: the transport-agnostic pipeline every intercepted `tools/call` goes through.

Both fronts (stdio `mcpfw run`, HTTP `mcpfw serve`) use it the same way; it never touches a
socket or a pipe, it only sees JSON-RPC messages as dicts.

    guard = Guard(rules=holder, store=store, settings=GuardSettings(server="fs"))
    session = await guard.open_session(agent=agent)           # records session start
    verdict = await session.check(request, era="handshake", can_elicit=True, ask=ask)
    if verdict.forward is not None:
        response = <send verdict.forward upstream, await its response>
        response = session.rewrite_response(verdict, response)   # 2026 input_required only
        <send response to the client>
        await session.finish(verdict, response)              # outcome forwarded/approved/...
    else:
        <send verdict.response to the client>                # denial, or input_required
        await session.finish(verdict)                        # outcome denied/declined/timeout
    session.filter_tools(result)        # a tools/list result: remember annotations, hide denied
    await session.close("client disconnected")               # records session end

`check` builds the `ToolCall`, evaluates it against the rule set in force (`rules.current`, hot
reloaded by `RuleHolder`), commits the decision to the audit store *before* returning a
forwardable verdict (write-ahead; a store failure denies unless `audit_failure="allow"`), and
for `ask` decisions asks a human:

- handshake era: through the injected `ask(call, decision)` callback (the front sends
  `elicitation/create` to the client), bounded by `ask_timeout_s`. Answers: "accept" forwards;
  "decline", "cancel", "unsupported" (client cannot elicit) and "timeout" deny.
- 2026-07-28 (modern) era: the answer is an `InputRequiredResult` carrying an elicitation and an
  HMAC-signed `requestState` bound to this agent, tool and arguments; the client retries with
  `inputResponses`, and `check` verifies the state and forwards (or denies) the retry; the
  outcome (approved, declined) is recorded against the decision that asked. An
  upstream's own `requestState` on an approved call is wrapped by `rewrite_response`, so its
  further rounds need no second approval. Clients without the elicitation capability are denied.

A denial is a complete tool result (`isError: true`, a text naming the rule, its message and
the decision id; `resultType: "complete"` for modern clients), never a JSON-RPC error. Every
call gets a decision event and an outcome event. Nothing here raises on bad input: a malformed
call is answered with a JSON-RPC error response in `verdict.response`.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from mcpfw.model import Agent, Decision, Effect, Outcome, ToolCall, new_id
from mcpfw.proxy.messages import (
    CLIENT_CAPABILITIES_KEY,
    INVALID_PARAMS,
    Era,
    Message,
    error_response,
    result_response,
)

if TYPE_CHECKING:
    from mcpfw.audit import AuditWriter
    from mcpfw.policy import RuleSet

__all__ = [
    "AskAnswer",
    "AskFn",
    "Guard",
    "GuardSession",
    "GuardSettings",
    "PinGate",
    "RuleSource",
    "Verdict",
    "ask_prompt",
    "client_can_elicit_modern",
    "denial_text",
    "elicit_params",
]

log = logging.getLogger("mcpfw.guard")

AskAnswer = Literal["accept", "decline", "cancel", "unsupported", "timeout"]
AskFn = Callable[[ToolCall, Decision], Awaitable[AskAnswer]]

STATE_PREFIX = "mcpfw1."
APPROVAL_KEY = "mcpfw/approval"  # our key in inputRequests / inputResponses


class RuleSource(Protocol):
    """Anything holding the rule set in force (see `mcpfw.proxy.reload.RuleHolder`)."""

    @property
    def current(self) -> RuleSet: ...


class PinVerdictLike(Protocol):
    """What tool pinning says about one call (`mcpfw.pins.PinVerdict`)."""

    @property
    def allowed(self) -> bool: ...
    @property
    def findings(self) -> tuple[str, ...]: ...
    @property
    def reason(self) -> str: ...


class PinGate(Protocol):
    """Tool-definition pinning for one upstream (`mcpfw.pins.PinChecker`); never raises."""

    async def check_call(self, tool: str) -> PinVerdictLike: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class GuardSettings:
    """How the guard behaves; validated once by the CLI, never per call."""

    server: str = ""  # the upstream's configured name (rules see it as tool.server)
    monitor: bool = False  # evaluate and record everything, enforce nothing
    audit_failure: Literal["deny", "allow"] = "deny"
    ask_timeout_s: float = 120.0
    # A decision not committed by then denies the call: a locked SQLite file or a hung database
    # connection must not hold calls forever (SQLite's own busy timeout is 10 s).
    audit_timeout_s: float = 30.0
    # An outcome may wait this long to share the next decision's commit (one commit per call
    # instead of two); `finish` returns once it is committed. The stdio runner sets 20 ms.
    outcome_linger_s: float = 0.0
    hide_denied: bool = False
    state_key: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    state_ttl_s: float = 600.0  # how long a modern-era approval request stays answerable


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """What to do with one `tools/call`: forward `forward` upstream, or answer `response`."""

    call: ToolCall | None  # None only for a malformed request
    decision: Decision | None
    forward: Message | None = None  # the request to send upstream (firewall-only params removed)
    response: Message | None = None  # the complete answer to send the client instead
    outcome: Outcome = Outcome.DENIED  # recorded by finish() (forwarded calls refine it)
    detail: str = ""
    era: Era = "handshake"
    approved: bool = False  # a human accepted this call (upstream input_required is re-wrapped)
    recorded: bool = False  # the decision event is in the store
    pending: bool = False  # input_required sent: the outcome is recorded when the retry comes
    started: float = field(default_factory=time.monotonic)


def denial_text(decision: Decision, *, why: str = "") -> str:
    """The text a model sees when a call is not forwarded."""
    head = f"mcpfw: {why}" if why else "mcpfw denied this tool call"
    text = f"{head} (rule '{decision.rule}'"
    if decision.message:
        text += f": {decision.message}"
    text += f"; decision {decision.id})."
    if decision.reason and decision.reason != decision.message:
        text += f" {decision.reason}"
    return text


def _tool_result(text: str, era: Era) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
    if era == "modern":
        result["resultType"] = "complete"
    return result


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def ask_prompt(call: ToolCall, decision: Decision) -> str:
    """The question put to the human for an `ask` decision."""
    args = json.dumps(dict(call.arguments), ensure_ascii=False, indent=1, default=str)
    if len(args) > 1500:
        args = args[:1500] + " …(truncated)"
    server = f" on server '{call.server}'" if call.server else ""
    why = f"\nRule '{decision.rule}'" + (f": {decision.message}" if decision.message else "")
    return (
        f"mcpfw: agent '{call.agent.id}' wants to call tool '{call.tool}'{server} "
        f"with arguments:\n{args}{why}\nAllow this call?"
    )


def elicit_params(call: ToolCall, decision: Decision) -> dict[str, Any]:
    """The `elicitation/create` params that ask a human to approve one call."""
    return {
        "message": ask_prompt(call, decision),
        "requestedSchema": {"type": "object", "properties": {}},
    }


class Guard:
    """Shared by every session of one upstream: rules, audit store and settings."""

    def __init__(
        self,
        *,
        rules: RuleSource,
        store: AuditWriter | None,
        settings: GuardSettings | None = None,
        store_error: str = "",
        pins: PinGate | None = None,
    ) -> None:
        self.rules = rules
        self.store = store
        self.pins = pins  # tool pinning: findings for rules, and denial of drifted tools
        self.store_error = store_error  # why there is no store, when there is none
        self.settings = settings or GuardSettings()
        self.fail_open_count = 0  # calls forwarded although the audit store failed
        self._used_states: dict[str, float] = {}  # spent approval nonces -> their expiry
        self._used_expiries: list[tuple[float, str]] = []  # heap of the same, soonest first

    def _spend_state(self, nonce: str, expiry: float) -> bool:
        """Mark an approval state's nonce used; False if it was already used (single use).

        Nonces of expired states are forgotten on the way: such a state is refused for its
        expiry before its nonce is looked at, so memory stays bounded by the states issued in
        the last `state_ttl_s`.
        """
        used, expiries = self._used_states, self._used_expiries
        now = time.time()
        while expiries and expiries[0][0] < now:
            _, spent = heapq.heappop(expiries)
            if used.get(spent, now) < now:
                del used[spent]
        if nonce in used:
            return False
        used[nonce] = expiry
        heapq.heappush(expiries, (expiry, nonce))
        return True

    async def open_session(
        self,
        *,
        agent: Agent,
        session_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> GuardSession:
        """Start a session (one client connection, or one stateless agent) and record it."""
        session = GuardSession(self, agent=agent, session_id=session_id or new_id())
        if self.store is not None:
            try:
                await self.store.record_session_start(
                    session_id=session.session_id,
                    agent=agent,
                    server=self.settings.server,
                    detail=detail,
                )
            except Exception as exc:  # any store failure: log; calls fail closed on their own
                log.error("audit: cannot record session start: %s", exc)
        return session

    # -- modern-era request state ----------------------------------------------------------

    def _seal(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(_canonical(payload)).decode().rstrip("=")
        sig = hmac.new(self.settings.state_key, body.encode(), hashlib.sha256).digest()
        return STATE_PREFIX + body + "." + base64.urlsafe_b64encode(sig).decode().rstrip("=")

    def _unseal(self, state: str) -> dict[str, Any] | None:
        body, _, sig = state[len(STATE_PREFIX) :].partition(".")
        want = hmac.new(self.settings.state_key, body.encode(), hashlib.sha256).digest()
        try:
            got = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
            if not hmac.compare_digest(want, got):
                return None
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None


class GuardSession:
    """One agent's session: builds calls, counts them, and runs each through the guard."""

    def __init__(self, guard: Guard, *, agent: Agent, session_id: str) -> None:
        self.guard = guard
        self.agent = agent
        self.session_id = session_id
        self.calls = 0
        self.annotations: dict[str, Mapping[str, Any]] = {}  # tool name -> tools/list annotations

    # -- tools/list ------------------------------------------------------------------------

    def filter_tools(self, result: Any) -> Any:
        """Remember tool annotations; with hide_denied, drop tools this agent can never call."""
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return result
        for tool in result["tools"]:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                ann = tool.get("annotations")
                self.annotations[tool["name"]] = ann if isinstance(ann, dict) else {}
        if not self.guard.settings.hide_denied or self.guard.settings.monitor:
            return result
        from mcpfw.policy import may_allow

        ruleset = self.guard.rules.current
        server = self.guard.settings.server
        kept = [
            tool
            for tool in result["tools"]
            if not (isinstance(tool, dict) and isinstance(tool.get("name"), str))
            or may_allow(ruleset, self.agent, server, tool["name"])
        ]
        if len(kept) == len(result["tools"]):
            return result
        return {**result, "tools": kept}

    # -- tools/call ------------------------------------------------------------------------

    def build_call(self, request: Message, params: Mapping[str, Any]) -> ToolCall:
        """The `ToolCall` the policy sees for one request."""
        name = params["name"]
        arguments = params.get("arguments")
        call = ToolCall(
            agent=self.agent,
            tool=name,
            server=self.guard.settings.server,
            arguments=arguments if isinstance(arguments, dict) else {},
            session_id=self.session_id,
            session_calls=self.calls,
            request_id=request.get("id"),
            annotations=self.annotations.get(name, {}),
        )
        self.calls += 1
        return call

    async def check(
        self,
        request: Message,
        *,
        era: Era = "handshake",
        can_elicit: bool = False,
        ask: AskFn | None = None,
    ) -> Verdict:
        """Decide one `tools/call` request; the decision is committed before this returns."""
        params = request.get("params")
        if (
            not isinstance(params, dict)
            or not isinstance(params.get("name"), str)
            or not isinstance(params.get("arguments", {}), dict | None)
        ):
            return Verdict(
                call=None,
                decision=None,
                era=era,
                response=error_response(
                    request.get("id"),
                    INVALID_PARAMS,
                    "tools/call needs params with a string 'name' and an object 'arguments'",
                ),
                detail="malformed tools/call",
            )
        # A modern-era retry carrying our approval state: strip it before evaluating/forwarding.
        approval: dict[str, Any] | None = None
        state = params.get("requestState")
        if era == "modern" and isinstance(state, str) and state.startswith(STATE_PREFIX):
            params, approval = self._take_approval(params, state)
            request = {**request, "params": params}

        call = self.build_call(request, params)
        from mcpfw.policy import evaluate

        settings = self.guard.settings
        pin = await self.guard.pins.check_call(call.tool) if self.guard.pins else None
        if pin is not None and pin.findings:
            call = replace(call, findings=tuple(pin.findings))  # rules see `tool.findings`
        decision = evaluate(self.guard.rules.current, call, monitor=settings.monitor)
        if pin is not None and not pin.allowed:  # pins: block, drifted or unverified tool
            decision = replace(
                decision,
                effect=Effect.DENY,
                rule="pins",
                message="tool definition not approved",
                reason=pin.reason,
            )
        answered = (
            approval is not None
            and not approval.get("error")
            and not approval.get("granted")
            and decision.enforced
            and decision.effect is Effect.ASK
        )
        if answered and approval is not None:
            # The answer to our own question: its outcome belongs to the decision that asked,
            # already committed when the question went out; no second decision event.
            decision = replace(decision, id=str(approval.get("decision")))
            recorded = True
        else:
            recorded = await self._record_decision(call, decision)
        if not recorded and settings.audit_failure != "allow":
            denied = replace(
                decision,
                effect=Effect.DENY,
                rule="audit",
                message="the audit log is unavailable",
                reason="decisions must be recorded before a call is forwarded (fail closed)",
            )
            return self._deny(call, denied, era, outcome=Outcome.DENIED, detail="audit failure")
        base = Verdict(call=call, decision=decision, era=era, recorded=recorded)

        if not decision.enforced or decision.effect is Effect.ALLOW:
            return replace(base, forward=request, outcome=Outcome.FORWARDED)
        if decision.effect is Effect.DENY:
            return self._deny(call, decision, era, outcome=Outcome.DENIED, recorded=recorded)
        # effect: ask
        if era == "modern":
            return self._ask_modern(base, request, params, approval, can_elicit)
        answer: AskAnswer = "unsupported"
        if can_elicit and ask is not None:
            answer = "timeout"
            with anyio.move_on_after(settings.ask_timeout_s):
                answer = await ask(call, decision)
        return self._answered(base, request, answer)

    def _answered(self, base: Verdict, request: Message, answer: str) -> Verdict:
        assert base.call is not None and base.decision is not None
        if answer == "accept":
            return replace(
                base, forward=request, outcome=Outcome.APPROVED, approved=True, detail="accept"
            )
        why = {
            "decline": "the user declined this tool call",
            "cancel": "the user dismissed the approval request for this tool call",
            "timeout": "no approval arrived in time for this tool call",
            "unsupported": "this tool call needs a human's approval, and the client cannot ask"
            " (no elicitation capability)",
        }.get(answer, "this tool call was not approved")
        outcome = Outcome.TIMEOUT if answer == "timeout" else Outcome.DECLINED
        return self._deny(
            base.call,
            base.decision,
            base.era,
            outcome=outcome,
            why=why,
            detail=answer,
            recorded=base.recorded,
        )

    def _deny(
        self,
        call: ToolCall,
        decision: Decision,
        era: Era,
        *,
        outcome: Outcome,
        why: str = "",
        detail: str = "",
        recorded: bool = False,
    ) -> Verdict:
        result = _tool_result(denial_text(decision, why=why), era)
        return Verdict(
            call=call,
            decision=decision,
            era=era,
            response=result_response(call.request_id, result),
            outcome=outcome,
            detail=detail,
            recorded=recorded,
        )

    def _ask_modern(
        self,
        base: Verdict,
        request: Message,
        params: Mapping[str, Any],
        approval: dict[str, Any] | None,
        can_elicit: bool,
    ) -> Verdict:
        assert base.call is not None and base.decision is not None
        if approval is not None:
            if approval.get("error"):
                return self._deny(
                    base.call,
                    base.decision,
                    "modern",
                    outcome=Outcome.DECLINED,
                    why=f"the approval state is not valid: {approval['error']}",
                    detail="bad request state",
                    recorded=base.recorded,
                )
            return self._answered(base, request, str(approval.get("answer", "decline")))
        if not can_elicit:
            return self._answered(base, request, "unsupported")
        state = self.guard._seal(
            {
                "n": new_id(),
                "d": base.decision.id,
                "c": self._call_digest(base.call),
                "e": time.time() + self.guard.settings.state_ttl_s,
                "g": False,
                "u": params.get("requestState"),
            }
        )
        result = {
            "resultType": "input_required",
            "inputRequests": {
                APPROVAL_KEY: {
                    "method": "elicitation/create",
                    "params": elicit_params(base.call, base.decision),
                }
            },
            "requestState": state,
        }
        return replace(
            base,
            response=result_response(request.get("id"), result),
            pending=True,
            detail="input_required: approval requested from the client",
        )

    def _call_digest(self, call: ToolCall) -> str:
        key = {"a": call.agent.id, "s": call.server, "t": call.tool, "x": call.arguments}
        return hashlib.sha256(_canonical(key)).hexdigest()

    def _take_approval(
        self, params: Mapping[str, Any], state: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify our request state; give back the params the upstream should see."""
        clean = dict(params)
        responses = clean.pop("inputResponses", None)
        payload = self.guard._unseal(state)
        clean.pop("requestState", None)
        if payload is None:
            return clean, {"error": "signature mismatch"}
        if isinstance(payload.get("u"), str):
            clean["requestState"] = payload["u"]
        if isinstance(responses, dict):
            rest = {k: v for k, v in responses.items() if k != APPROVAL_KEY}
            if rest:
                clean["inputResponses"] = rest
        nonce = str(payload.get("n", ""))
        probe = ToolCall(
            agent=self.agent,
            tool=str(clean.get("name")),
            server=self.guard.settings.server,
            arguments=clean.get("arguments") or {},
        )
        if payload.get("c") != self._call_digest(probe):
            return clean, {"error": "it was issued for a different agent, tool or arguments"}
        if float(payload.get("e", 0)) < time.time():
            return clean, {"error": "it has expired; call the tool again"}
        if payload.get("g") is True:  # approved earlier; an upstream round follows
            return clean, {"answer": "accept", "granted": True, "decision": payload.get("d")}
        if not self.guard._spend_state(nonce, float(payload.get("e", 0))):
            return clean, {"error": "it was already used"}
        answer = "cancel"
        reply = responses.get(APPROVAL_KEY) if isinstance(responses, dict) else None
        if isinstance(reply, dict) and reply.get("action") in ("accept", "decline", "cancel"):
            answer = reply["action"]
        return clean, {"answer": answer, "decision": payload.get("d")}

    def rewrite_response(self, verdict: Verdict, response: Message) -> Message:
        """Wrap an upstream `requestState` on an approved modern call so retries stay approved."""
        result = response.get("result")
        if (
            not verdict.approved
            or verdict.era != "modern"
            or verdict.call is None
            or not isinstance(result, dict)
            or result.get("resultType") != "input_required"
        ):
            return response
        state = self.guard._seal(
            {
                "n": new_id(),
                "d": verdict.decision.id if verdict.decision else "",
                "c": self._call_digest(verdict.call),
                "e": time.time() + self.guard.settings.state_ttl_s,
                "g": True,
                "u": result.get("requestState"),
            }
        )
        return {**response, "result": {**result, "requestState": state}}

    # -- audit -----------------------------------------------------------------------------

    async def _record_decision(self, call: ToolCall, decision: Decision) -> bool:
        store = self.guard.store
        if store is None:
            self._audit_failed(f"no audit store ({self.guard.store_error or 'not open'})")
            return False
        try:
            with anyio.fail_after(self.guard.settings.audit_timeout_s):
                await store.record_decision(call, decision)
        except TimeoutError:
            timeout = self.guard.settings.audit_timeout_s
            self._audit_failed(f"the decision was not committed within {timeout:g} s")
            return False
        except anyio.get_cancelled_exc_class():
            # mcpfw is stopping: the queued decision still commits, so close it with an outcome
            with anyio.move_on_after(2, shield=True):
                try:
                    await store.record_outcome(
                        decision.id, Outcome.CANCELLED, detail="mcpfw stopped during the decision"
                    )
                except Exception as exc:  # shutting down: log and carry on
                    log.error("audit: cannot record outcome of decision %s: %s", decision.id, exc)
            raise
        except Exception as exc:  # any store failure is a write failure: fail closed below
            self._audit_failed(str(exc) or type(exc).__name__)
            return False
        return True

    def _audit_failed(self, why: str) -> None:
        if self.guard.settings.audit_failure == "allow":
            self.guard.fail_open_count += 1
            log.error(
                "AUDIT FAILURE (fail-open #%d, audit_failure: allow): call forwarded "
                "without a recorded decision: %s",
                self.guard.fail_open_count,
                why,
            )
        else:
            log.error("audit failure, call denied: %s", why)

    async def finish(
        self,
        verdict: Verdict,
        response: Message | None = None,
        *,
        outcome: Outcome | None = None,
        detail: str = "",
    ) -> None:
        """Record what happened to the call (never raises)."""
        store = self.guard.store
        if store is None or verdict.decision is None or not verdict.recorded or verdict.pending:
            return
        is_error: bool | None = None
        result: Any = None
        if outcome is None:
            outcome = verdict.outcome
            if response is not None and "error" in response:
                outcome = Outcome.UPSTREAM_ERROR
                result = response.get("error")
                is_error = True
            elif response is not None:
                result = response.get("result")
                is_error = bool(isinstance(result, dict) and result.get("isError"))
        latency = (time.monotonic() - verdict.started) * 1000 if verdict.forward else None
        linger = self.guard.settings.outcome_linger_s
        try:
            await store.record_outcome(
                verdict.decision.id,
                outcome,
                latency_ms=latency,
                is_error=is_error,
                result=result,
                detail=detail or verdict.detail,
                **({"linger_s": linger} if linger > 0 else {}),
            )
        except Exception as exc:  # the call already happened; losing the outcome is logged
            log.error("audit: cannot record outcome of decision %s: %s", verdict.decision.id, exc)

    async def close(self, reason: str = "") -> None:
        """Record the end of the session (never raises)."""
        if self.guard.store is None:
            return
        try:
            await self.guard.store.record_session_end(self.session_id, reason=reason)
        except Exception as exc:  # shutting down: log and carry on
            log.error("audit: cannot record session end: %s", exc)


_elicit_params = elicit_params  # the name mcpfw.proxy.http_gate imports


def client_can_elicit_modern(params: Any) -> bool:
    """Whether a modern-era request declares the elicitation capability in its `_meta`."""
    if not isinstance(params, dict):
        return False
    meta = params.get("_meta")
    caps = meta.get(CLIENT_CAPABILITIES_KEY) if isinstance(meta, dict) else None
    return isinstance(caps, dict) and isinstance(caps.get("elicitation"), dict)
