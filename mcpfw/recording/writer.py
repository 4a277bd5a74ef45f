"""The session recorder the relay calls: `record(direction, message, decision=...)`.

`record` never blocks and never touches the database: it stamps the message with the next
sequence number and the current time and queues it. A background task redacts the queued
messages (with the audit store's redaction) and writes them in batches, so recording adds
no disk wait to the relayed path. Recording is evidence, not enforcement: the write-ahead
guarantee belongs to decision events. If a batch cannot be written, the recorder logs it
loudly, counts the lost messages (`dropped`), and keeps relaying; it never blocks a call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcpfw.audit.redaction import Redactor as AuditRedactor
from mcpfw.audit.redaction import redact_text
from mcpfw.model import Agent, Decision, utcnow
from mcpfw.recording.format import Direction, RecordedDecision, SessionHeader
from mcpfw.recording.store import end_session, insert_messages, insert_session, link_decision

__all__ = ["SessionRecorder", "message_redactor", "open_recorder", "to_json_message"]

log = logging.getLogger("mcpfw.recording")

# redact(value) -> (redacted copy, JSON pointers that were masked)
Redactor = Callable[[Any], tuple[Any, tuple[str, ...]]]


_SCHEMA_KEYS = ("inputSchema", "outputSchema")


def _text_only(value: Any, path: str, masked: list[str]) -> Any:
    """Secret-shaped text masked, key names left alone (for JSON schemas, whose property
    names such as `token` or `password` describe arguments rather than hold secrets)."""
    if isinstance(value, str):
        text, kinds = redact_text(value)
        if kinds:
            masked.append(path)
        return text
    if isinstance(value, Mapping):
        return {
            k: _text_only(v, f"{path}/{str(k).replace('~', '~0').replace('/', '~1')}", masked)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_text_only(v, f"{path}/{i}", masked) for i, v in enumerate(value)]
    return value


def _split_schemas(message: Mapping[str, Any]) -> tuple[Any, list[tuple[int, str, Any]]]:
    """A tools/list result without its tools' schemas, and the schemas taken out."""
    result = message.get("result")
    tools = result.get("tools") if isinstance(result, Mapping) else None
    if not isinstance(result, Mapping) or not isinstance(tools, list):
        return message, []
    taken: list[tuple[int, str, Any]] = []
    stripped: list[Any] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            taken.extend((i, k, tool[k]) for k in _SCHEMA_KEYS if k in tool)
            tool = {k: v for k, v in tool.items() if k not in _SCHEMA_KEYS}
        stripped.append(tool)
    return {**message, "result": {**result, "tools": stripped}}, taken


def message_redactor(redactor: AuditRedactor) -> Redactor:
    """Redact whole JSON-RPC messages the way the audit log redacts a call.

    The secret detectors run over the whole message; the configured JSON pointers (which
    point into a call's arguments) apply to `params.arguments` of a `tools/call` request, so
    a recorded request is masked exactly like its decision event. Tool schemas in a
    `tools/list` result only get secret-shaped text masked: their property names (`token`,
    `password`) describe arguments, and masking them would break the recorded tool list.
    """

    def redact(message: Any) -> tuple[Any, tuple[str, ...]]:
        if not isinstance(message, Mapping):
            whole = redactor.redact(message, use_pointers=False)
            return whole.value, whole.paths
        params = message.get("params")
        if (
            message.get("method") == "tools/call"
            and isinstance(params, Mapping)
            and isinstance(params.get("arguments"), Mapping)
        ):
            args = redactor.redact(params["arguments"])
            rest = redactor.redact(
                {**message, "params": {k: v for k, v in params.items() if k != "arguments"}},
                use_pointers=False,
            )
            out = dict(rest.value)
            out["params"] = {**out["params"], "arguments": args.value}
            paths = rest.paths + tuple("/params/arguments" + p for p in args.paths)
            return out, paths
        stripped, schemas = _split_schemas(message)
        whole = redactor.redact(stripped, use_pointers=False)
        if not schemas:
            return whole.value, whole.paths
        masked: list[str] = []
        value = whole.value
        tools = value["result"]["tools"]
        for i, key, schema in schemas:
            tools[i][key] = _text_only(schema, f"/result/tools/{i}/{key}", masked)
        return value, whole.paths + tuple(masked)

    return redact


def to_json_message(message: Any) -> dict[str, Any]:
    """A JSON-RPC message as a plain dict, from a dict, an SDK model or a SessionMessage."""
    inner = getattr(message, "message", None)
    if inner is not None and not isinstance(message, Mapping):
        message = inner  # a SessionMessage
    dump = getattr(message, "model_dump", None)
    if dump is not None:
        data = dump(by_alias=True, exclude_unset=True, mode="json")
        if isinstance(data, dict):
            return data
    if isinstance(message, Mapping):
        return dict(message)
    raise TypeError(f"cannot record a {type(message).__name__} as a JSON-RPC message")


class SessionRecorder:
    """Queues a session's messages and writes them in order, in batches.

    It can be created before the database is open (the relay starts at once, the audit store
    opens in the background): messages queue until `start()` names the engine and session.
    """

    def __init__(self, *, batch_size: int = 256) -> None:
        self.engine: AsyncEngine | None = None
        self.header: SessionHeader | None = None
        self._redact: Redactor | None = None
        self._batch_size = batch_size
        self._queue: list[dict[str, Any]] = []
        self._queued: dict[int, dict[str, Any]] = {}  # seq -> queued item (for attach)
        self._late: list[tuple[int, RecordedDecision]] = []  # links for rows already written
        self._seq = 0
        self._wake = anyio.Event()
        self._started = anyio.Event()
        self._start_done = anyio.Event()  # start() finished, well or not
        self._start_requested = False
        self._closed = False
        self._lock = anyio.Lock()
        self.written = 0
        self.dropped = 0

    @property
    def session_id(self) -> str:
        """The recorded session's id ("" before `start`)."""
        return self.header.session_id if self.header is not None else ""

    def record(
        self,
        direction: Direction | str,
        message: Any,
        *,
        decision: Decision | None = None,
        decision_id: str | None = None,
        source: str = "",
        time: datetime | None = None,
    ) -> int:
        """Queue one message in relay order; returns its sequence number. Never blocks."""
        if self._closed:
            return 0  # the session is over; late stragglers are not part of it
        self._seq += 1
        item = {
            "seq": self._seq,
            "time": time or utcnow(),
            "direction": Direction(direction).value,
            # a snapshot now: the relay may hand the same dicts on, and nothing after this
            # point may change what was recorded (C-speed for typical message sizes)
            "message": json.dumps(to_json_message(message), ensure_ascii=False, default=str),
            "decision_id": decision.id if decision is not None else decision_id,
            "decision": None if decision is None else RecordedDecision.from_decision(decision),
            "source": source,
        }
        self._queue.append(item)
        self._queued[self._seq] = item
        if len(self._queue) >= self._batch_size:
            self._wake.set()
        return self._seq

    def attach(self, seq: int, decision: Decision) -> None:
        """Link an already recorded message (a tools/call request) to its decision."""
        if seq <= 0:
            return
        recorded = RecordedDecision.from_decision(decision)
        item = self._queued.get(seq)
        if item is not None:
            item["decision_id"] = decision.id
            item["decision"] = recorded
        else:
            self._late.append((seq, recorded))

    def will_start(self) -> None:
        """Say that `start()` has been scheduled, so `aclose()` waits for it, not drops."""
        self._start_requested = True

    async def start(self, engine: AsyncEngine, header: SessionHeader, *, redact: Redactor) -> None:
        """Create the session row; from now on queued messages are written."""
        self._start_requested = True
        try:
            await self._start(engine, header, redact)
        finally:
            self._start_done.set()

    async def _start(self, engine: AsyncEngine, header: SessionHeader, redact: Redactor) -> None:
        claims, _ = redact(dict(header.agent.claims))
        a = header.agent
        self.header = SessionHeader(
            session_id=header.session_id,
            agent=Agent(id=a.id, roles=a.roles, claims=claims, transport=a.transport),
            server=header.server,
            # the session began with its first message, which may predate the store opening
            started=min([header.started, *(item["time"] for item in self._queue[:1])]),
            instance=header.instance,
            note=header.note,
        )
        self._redact = redact
        await insert_session(engine, self.header)
        self.engine = engine
        self._started.set()
        self._wake.set()

    async def flush(self) -> None:
        """Write everything queued so far (nothing before `start`)."""
        if self.engine is None or self._redact is None:
            return
        async with self._lock:
            while self._queue or self._late:
                batch, self._queue = self._queue, []
                late, self._late = self._late, []
                # Redaction is regex work: in a worker thread, so the relay's event loop keeps
                # turning while a big batch is masked.
                texts = [item["message"] for item in batch]
                masked = await anyio.to_thread.run_sync(self._redact_texts, texts)
                rows = []
                for item, (redacted, pointers) in zip(batch, masked, strict=True):
                    self._queued.pop(item["seq"], None)  # attach() after this goes late
                    rows.append({**item, "message": redacted, "redacted": pointers})
                try:
                    await insert_messages(self.engine, self.session_id, rows)
                    for seq, decision in late:
                        await link_decision(self.engine, self.session_id, seq, decision)
                except (SQLAlchemyError, OSError) as exc:
                    self.dropped += len(rows)
                    log.error(
                        "recording of session %s lost %d messages: %s",
                        self.session_id,
                        len(rows),
                        exc,
                    )
                else:
                    self.written += len(rows)

    def _redact_texts(self, texts: list[str]) -> list[tuple[Any, tuple[str, ...]]]:
        assert self._redact is not None
        redact = self._redact
        return [redact(json.loads(text)) for text in texts]

    async def run(self, *, interval: float = 0.2) -> None:
        """Background flusher: write a batch when it is full or every `interval` seconds."""
        await self._started.wait()
        while not self._closed:
            with anyio.move_on_after(interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()
        await self.flush()

    async def aclose(self, *, reason: str = "") -> None:
        """Write what is left and mark the session ended (drops it if never started)."""
        self._closed = True
        self._wake.set()
        if self.engine is None and self._start_requested:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self._start_done.wait()  # a short session can end before its start
        if self.engine is None:
            if self._queue:
                log.error(
                    "recording: %d messages not written (the audit store never opened)",
                    len(self._queue),
                )
                self.dropped += len(self._queue)
                self._queue.clear()
            return
        with anyio.CancelScope(shield=True):
            await self.flush()
            try:
                await end_session(self.engine, self.session_id, utcnow(), reason)
            except (SQLAlchemyError, OSError) as exc:
                log.error("recording of session %s: cannot mark it ended: %s", self.session_id, exc)


@asynccontextmanager
async def open_recorder(
    engine: AsyncEngine,
    *,
    session_id: str,
    agent: Agent,
    server: str = "",
    instance: str = "",
    redact: Redactor,
    note: str = "",
) -> AsyncIterator[SessionRecorder]:
    """Start recording a session; the recorder flushes in the background until exit."""
    header = SessionHeader(
        session_id=session_id,
        agent=agent,
        server=server,
        started=utcnow(),
        instance=instance,
        note=note,
    )
    recorder = SessionRecorder()
    await recorder.start(engine, header, redact=redact)
    async with anyio.create_task_group() as tg:
        tg.start_soon(recorder.run)
        try:
            yield recorder
        finally:
            await recorder.aclose()
            tg.cancel_scope.cancel()
