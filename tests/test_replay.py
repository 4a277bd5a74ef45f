"""Replay's core: rebuilding calls from recordings, diffing decisions, re-execution."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcpfw.audit.events import digest
from mcpfw.model import Agent, Effect, ToolCall
from mcpfw.policy import RuleSet, evaluate, load_ruleset
from mcpfw.recording import (
    Direction,
    RecordedDecision,
    RecordedMessage,
    Recording,
    SessionHeader,
)
from mcpfw.replay import ChangeKind, ReplayCall, calls_from_recording, replay
from mcpfw.replay.execute import ExecStatus, UpstreamCallError, execute, result_digest

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

ORIGINAL = """
default: deny
rules:
  - id: read-ws
    effect: allow
    tools: [read_file]
    when: args.path.startsWith("/ws/")
  - id: no-env
    effect: deny
    tools: [read_file]
    when: args.path.endsWith(".env")
  - id: writes
    effect: allow
    tools: [write_file]
"""


def _rules(tmp_path: Path, name: str, text: str) -> RuleSet:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_ruleset([path])


def _call(tool: str, args: Mapping[str, Any], n: int = 0, agent: str = "ci") -> ToolCall:
    return ToolCall(
        agent=Agent(id=agent),
        tool=tool,
        arguments=args,
        session_id="s",
        session_calls=n,
        time=T0 + timedelta(seconds=n),
    )


def _recorded(ruleset: RuleSet, call: ToolCall, redacted: tuple[str, ...] = ()) -> ReplayCall:
    """A call as the firewall would have recorded it under `ruleset`."""
    d = evaluate(ruleset, call)
    return ReplayCall(
        call=call,
        original=RecordedDecision.from_decision(d),
        redacted=redacted,
        where=f"call {call.session_calls}",
    )


def test_the_same_rules_change_nothing(tmp_path: Path) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    calls = [
        _recorded(rs, _call("read_file", {"path": "/ws/a"}, 0)),
        _recorded(rs, _call("read_file", {"path": "/ws/.env"}, 1)),
        _recorded(rs, _call("delete_file", {"path": "/ws/a"}, 2)),
    ]
    report = replay(rs, calls)
    assert report.total == 3
    assert not report.changed
    assert report.to_json()["changed"] == 0


def test_each_kind_of_change_is_named(tmp_path: Path) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    candidate = _rules(
        tmp_path,
        "cand",
        ORIGINAL.replace("tools: [write_file]", "tools: [write_file]\n    when: 'false'")
        + """
  - id: delete-ask
    effect: ask
    tools: [delete_file]
  - id: read-any
    effect: allow
    tools: [read_file]
    when: args.path.startsWith("/tmp/")
  - id: read-ws-src
    effect: allow
    tools: [read_file]
    when: args.path.startsWith("/ws/src/")
""".replace("  - id: read-ws\n", "  - id: read-ws\n"),
    )
    calls = [
        _recorded(rs, _call("write_file", {"path": "/ws/a"}, 0)),  # allow -> deny
        _recorded(rs, _call("read_file", {"path": "/tmp/x"}, 1)),  # deny -> allow
        _recorded(rs, _call("delete_file", {"path": "/ws/a"}, 2)),  # deny -> ask
        _recorded(rs, _call("read_file", {"path": "/ws/README"}, 3)),  # same
    ]
    report = replay(candidate, calls)
    kinds = [(c.call.where, c.kind) for c in report.changes]
    assert kinds == [
        ("call 0", ChangeKind.NEWLY_DENIED),
        ("call 1", ChangeKind.NEWLY_ALLOWED),
        ("call 2", ChangeKind.NEWLY_ASKED),
    ]
    assert report.counts == {"newly_denied": 1, "newly_allowed": 1, "newly_asked": 1}
    assert report.changes[0].before.rule == "writes"
    assert report.changes[0].after.rule == "default"


def test_the_same_effect_through_another_rule_is_a_rule_change(tmp_path: Path) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    renamed = _rules(tmp_path, "cand", ORIGINAL.replace("id: read-ws", "id: read-workspace"))
    report = replay(renamed, [_recorded(rs, _call("read_file", {"path": "/ws/a"}))])
    assert [c.kind for c in report.changes] == [ChangeKind.RULE_CHANGED]
    change = report.changes[0].to_json()
    assert change["before"]["rule"] == "read-ws"
    assert change["after"]["rule"] == "read-workspace"
    assert change["after"]["effect"] == change["before"]["effect"] == "allow"


def test_a_call_with_redacted_arguments_is_flagged_uncertain_changed_or_not(
    tmp_path: Path,
) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    stricter = _rules(
        tmp_path,
        "cand",
        ORIGINAL
        + """
  - id: no-tokens
    effect: deny
    when: '"token" in args'
""",
    )
    masked = _call("read_file", {"path": "/ws/a", "token": "[REDACTED:secret-key]"}, 0)
    unchanged = _call("write_file", {"path": "/ws/b", "password": "[REDACTED:secret-key]"}, 1)
    report = replay(
        stricter,
        [
            _recorded(rs, masked, ("/arguments/token",)),
            _recorded(rs, unchanged, ("/arguments/password",)),
        ],
    )
    assert [(c.kind, c.uncertain) for c in report.changes] == [(ChangeKind.NEWLY_DENIED, True)]
    assert [rc.where for rc in report.uncertain_unchanged] == ["call 1"]
    assert report.uncertain == 2
    data = report.to_json()
    assert data["uncertain"] == 2
    assert data["uncertain_unchanged"][0]["redacted"] == ["/arguments/password"]


def test_progress_is_reported_until_every_call_is_done(tmp_path: Path) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    calls = [_recorded(rs, _call("read_file", {"path": f"/ws/{i}"}, i)) for i in range(10)]
    seen: list[int] = []
    replay(rs, calls, on_progress=seen.append, progress_every=4)
    assert seen == [4, 8, 10]


def _msg(seq: int, direction: str, message: dict[str, Any], **kw: Any) -> RecordedMessage:
    return RecordedMessage(
        seq=seq,
        time=T0 + timedelta(seconds=seq),
        direction=Direction(direction),
        message=message,
        **kw,
    )


def _session() -> Recording:
    d1 = RecordedDecision(id="d1", effect=Effect.ALLOW, rule="read-ws")
    d2 = RecordedDecision(id="d2", effect=Effect.DENY, rule="no-env")
    tools = {
        "tools": [
            {
                "name": "read_file",
                "inputSchema": {"type": "object"},
                "annotations": {"readOnlyHint": True},
            }
        ]
    }
    result = {"content": [{"type": "text", "text": "hello"}]}
    denial = {"content": [{"type": "text", "text": "denied"}], "isError": True}
    messages = (
        _msg(1, "c2s", {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
        _msg(2, "s2c", {"jsonrpc": "2.0", "id": 1, "result": tools}),
        _msg(
            3,
            "c2s",
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "read_file", "arguments": {"path": "/ws/a"}},
            },
            decision_id="d1",
        ),
        _msg(4, "s2c", {"jsonrpc": "2.0", "id": 2, "result": result}, decision_id="d1"),
        _msg(
            5,
            "c2s",
            {
                "jsonrpc": "2.0",
                "id": "x",
                "method": "tools/call",
                "params": {
                    "name": "read_file",
                    "arguments": {"path": "/ws/.env", "key": "[REDACTED:pointer]"},
                },
            },
            decision_id="d2",
            redacted=("/params/arguments/key",),
        ),
        _msg(
            6,
            "s2c",
            {"jsonrpc": "2.0", "id": "x", "result": denial},
            decision_id="d2",
            source="firewall",
        ),
    )
    header = SessionHeader(
        session_id="sess", agent=Agent(id="dev", roles=("r",)), server="fs", started=T0
    )
    return Recording(header=header, messages=messages, decisions={"d1": d1, "d2": d2})


def test_calls_are_rebuilt_from_a_recording_as_the_policy_saw_them() -> None:
    calls = list(calls_from_recording(_session()))
    assert [c.call.arguments["path"] for c in calls] == ["/ws/a", "/ws/.env"]
    first, second = calls
    assert first.call.agent.roles == ("r",)
    assert first.call.server == "fs"
    assert first.call.session_calls == 0 and second.call.session_calls == 1
    assert first.call.annotations == {"readOnlyHint": True}
    assert first.call.time == T0 + timedelta(seconds=3)
    assert first.result == {"content": [{"type": "text", "text": "hello"}]}
    assert first.where == "session sess seq 3"
    # the firewall's own denial is not an upstream result
    assert second.result is None
    assert second.redacted == ("/key",)
    assert second.original.rule == "no-env"


class _FakeUpstream:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, dict[str, Any]]] = []

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Any]:
        async def call(name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
            self.sent.append((name, dict(arguments)))
            answer = self.answers[arguments["path"]]
            if isinstance(answer, Exception):
                raise answer
            return answer

        yield call


@pytest.mark.anyio
async def test_execute_sends_only_allowed_unredacted_calls_and_compares_results(
    tmp_path: Path,
) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    same = {"content": [{"type": "text", "text": "A"}]}

    def rc(path: str, n: int, result: Any = None, redacted: tuple[str, ...] = ()) -> ReplayCall:
        base = _recorded(rs, _call("read_file", {"path": path}, n), redacted)
        return ReplayCall(
            call=base.call,
            original=base.original,
            redacted=redacted,
            where=base.where,
            result=result,
        )

    calls = [
        rc("/ws/same", 0, same),
        rc("/ws/diff", 1, same),
        rc("/ws/.env", 2, same),  # the candidate denies: never sent
        rc("/ws/masked", 3, same, ("/arguments/k",)),
        rc("/ws/gone", 4, same),
        rc("/ws/new", 5, None),
    ]
    upstream = _FakeUpstream(
        {
            "/ws/same": {"content": [{"type": "text", "text": "A"}], "_meta": {"x": 1}},
            "/ws/diff": {"content": [{"type": "text", "text": "B"}]},
            "/ws/gone": UpstreamCallError("upstream error -32603: boom"),
            "/ws/new": same,
        }
    )
    with anyio.fail_after(10):
        report = await execute(rs, calls, upstream.connect)
    statuses = [r.status for r in report.results]
    assert statuses == [
        ExecStatus.SAME,
        ExecStatus.DIFFERENT,
        ExecStatus.NOT_SENT,
        ExecStatus.NOT_SENT,
        ExecStatus.FAILED,
        ExecStatus.UNCOMPARED,
    ]
    assert [p for _, a in upstream.sent for p in [a["path"]]] == [
        "/ws/same",
        "/ws/diff",
        "/ws/gone",
        "/ws/new",
    ]
    assert report.results[1].differing == ("content",)
    assert "no-env" in report.results[2].detail
    assert "redacted" in report.results[3].detail
    assert report.results[0].recorded_digest == result_digest(same)
    assert report.changed


@pytest.mark.anyio
async def test_execute_compares_with_the_audit_digest_when_no_full_result_was_recorded(
    tmp_path: Path,
) -> None:
    rs = _rules(tmp_path, "orig", ORIGINAL)
    live = {"content": [{"type": "text", "text": "A"}]}
    base = _recorded(rs, _call("read_file", {"path": "/ws/a"}))
    matching = ReplayCall(call=base.call, original=base.original, result_digest=digest(live))
    upstream = _FakeUpstream({"/ws/a": live})
    with anyio.fail_after(10):
        report = await execute(rs, [matching], upstream.connect)
    assert [r.status for r in report.results] == [ExecStatus.SAME]
    assert not report.changed


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sessions"


def _projection(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a replay report that the hand-written expected diffs pin down."""
    return {
        "calls": data["calls"],
        "changes": [
            {
                "agent": c["agent"],
                "tool": c["tool"],
                "arguments": c["arguments"],
                "kind": c["kind"],
                "before": {"effect": c["before"]["effect"], "rule": c["before"]["rule"]},
                "after": {"effect": c["after"]["effect"], "rule": c["after"]["rule"]},
                "uncertain": c["uncertain"],
            }
            for c in data["changes"]
        ],
        "uncertain_unchanged": [
            {"agent": u["agent"], "tool": u["tool"], "arguments": u["arguments"]}
            for u in data["uncertain_unchanged"]
        ],
    }


@pytest.mark.parametrize(
    "expected_file", sorted(p.name for p in (FIXTURES / "expected").glob("*.json"))
)
def test_the_recorded_fixture_sessions_replay_to_their_expected_diffs(expected_file: str) -> None:
    import json

    from mcpfw.recording import load_jsonl

    expected = json.loads((FIXTURES / "expected" / expected_file).read_text())
    candidate = load_ruleset([FIXTURES / expected["candidate"]])
    calls = [
        rc for s in expected["sessions"] for rc in calls_from_recording(load_jsonl(FIXTURES / s))
    ]
    report = replay(candidate, calls)
    want = {k: expected[k] for k in ("calls", "changes", "uncertain_unchanged")}
    assert _projection(report.to_json()) == want


def test_every_fixture_call_was_decided_by_the_original_rules_as_recorded() -> None:
    from mcpfw.recording import load_jsonl

    original = load_ruleset([FIXTURES / "rules" / "original.yaml"])
    for name in ("dev-handshake.jsonl", "ci-modern.jsonl"):
        rec = load_jsonl(FIXTURES / name)
        calls = list(calls_from_recording(rec))
        assert calls, name
        assert {rc.original.revision for rc in calls} == {original.revision}


def test_a_reused_request_id_gets_the_response_that_followed_it() -> None:
    d1 = RecordedDecision(id="d1", effect=Effect.ALLOW, rule="r")
    d2 = RecordedDecision(id="d2", effect=Effect.ALLOW, rule="r")

    def call(seq: int, path: str, decision: str) -> RecordedMessage:
        return _msg(seq, "c2s", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": {"name": "read_file", "arguments": {"path": path}}},
                    decision_id=decision)  # fmt: skip

    def answer(seq: int, text: str) -> RecordedMessage:
        result = {"content": [{"type": "text", "text": text}]}
        return _msg(seq, "s2c", {"jsonrpc": "2.0", "id": 1, "result": result})

    rec = Recording(
        header=_session().header,
        messages=(call(1, "/a", "d1"), answer(2, "A"), call(3, "/b", "d2"), answer(4, "B")),
        decisions={"d1": d1, "d2": d2},
    )
    texts = [rc.result["content"][0]["text"] for rc in calls_from_recording(rec) if rc.result]
    assert texts == ["A", "B"]
