"""The hash chain: canonical encoding, event hashes, and verification (pure, no I/O).

Each event row stores `prev_hash` and `hash = sha256(prev_hash || canonical)`, where
`prev_hash` is the 64-char hex hash of the previous event of the same chain (64 zeros for the
first, or the checkpoint hash after a prune), `||` is concatenation and `canonical` is the JSON
array (no spaces, UTF-8, not ASCII-escaped) of the `HASHED_COLUMNS` values in that order; the
`data` column is hashed as the exact text stored. Both strings are UTF-8 encoded.

`ChainVerifier` walks rows of one or more chains in (instance, seq) order. At the first event
that does not fit it keeps the rest of that chain and explains the break as one of:
edited (an event's content or hash changed), deleted (events missing: a gap in seq, or a
truncated tail against the chain head), reordered (an event sits where another belongs), or
inserted (an event that was never appended by the firewall).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "GENESIS",
    "HASHED_COLUMNS",
    "BreakKind",
    "ChainBreak",
    "ChainReport",
    "ChainStart",
    "ChainVerifier",
    "VerifyReport",
    "canonical",
    "clean_report",
    "event_hash",
    "verify_rows",
]

# The `audit_events` columns the chain covers. Order matters: the canonical encoding is the
# JSON array of these values in this order.
HASHED_COLUMNS: tuple[str, ...] = (
    "id",
    "instance",
    "seq",
    "kind",
    "time",
    "session_id",
    "agent_id",
    "server",
    "tool",
    "effect",
    "enforced",
    "rule",
    "shadow_effect",
    "decision_id",
    "outcome",
    "data",
)

GENESIS = "0" * 64
N_HASHED = len(HASHED_COLUMNS)
I_ID = HASHED_COLUMNS.index("id")
I_INSTANCE = HASHED_COLUMNS.index("instance")
I_SEQ = HASHED_COLUMNS.index("seq")
I_PREV = N_HASHED  # rows are the hashed values, then prev_hash, then hash
I_HASH = N_HASHED + 1

BreakKind = Literal["edited", "deleted", "reordered", "inserted"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not allowed in a hashed column")


def _make_encode() -> Callable[[Sequence[Any]], str]:
    # json's C encoder, built once: JSONEncoder.encode() builds a new one per call, which
    # costs more than encoding a short row. Same output as _ENCODER.encode.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return _ENCODER.encode
    encoder = make(None, _no_default, json.encoder.encode_basestring, None, ":", ",", False,
                   False, True)  # fmt: skip

    def encode(values: Sequence[Any]) -> str:
        return "".join(encoder(values, 0))

    return encode


_encode = _make_encode()
_sha256 = hashlib.sha256


def canonical(values: Sequence[Any]) -> str:
    """The canonical text of an event: its hashed column values as a compact JSON array."""
    return _encode(tuple(values))


def event_hash(prev_hash: str, values: Sequence[Any]) -> str:
    """sha256(prev_hash || canonical(values)) as 64 hex chars."""
    return _sha256((prev_hash + _encode(tuple(values))).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainStart:
    """Where a chain's verification starts (a prune checkpoint) and ends (its head record)."""

    seq: int = 0  # the last pruned seq; verification expects seq + 1 next
    hash: str = GENESIS
    head_seq: int | None = None  # from audit_chains; None when the head record is missing
    head_hash: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainBreak:
    """The first place a chain stops verifying, and how it broke."""

    kind: BreakKind
    seq: int  # the chain position where the break is
    event_id: str | None  # the event named as broken (None when it is missing)
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainReport:
    """The verification of one chain."""

    instance: str
    events: int  # events verified before any break
    first_seq: int | None
    last_seq: int | None
    checkpoint_seq: int
    head_hash: str
    broken: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        """True when the chain verified from its checkpoint to its head."""
        return self.broken is None


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyReport:
    """The verification of every chain in a database."""

    chains: tuple[ChainReport, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every chain verified."""
        return all(c.ok for c in self.chains)

    @property
    def events(self) -> int:
        """Events verified across all chains."""
        return sum(c.events for c in self.chains)

    @property
    def breaks(self) -> tuple[ChainReport, ...]:
        """The chains that did not verify."""
        return tuple(c for c in self.chains if not c.ok)


class _Chain:
    __slots__ = (
        "first_seq",
        "instance",
        "limit",
        "n",
        "prev_row",
        "rest",
        "row",
        "seq",
        "start",
        "top",
    )

    def __init__(self, instance: str, start: ChainStart) -> None:
        self.instance = instance
        self.start = start
        self.seq = start.seq  # last verified seq
        self.top = start.hash  # last verified hash
        self.n = 0
        self.first_seq: int | None = None
        self.row: Sequence[Any] | None = None  # last verified row
        self.prev_row: Sequence[Any] | None = None
        self.rest: list[Sequence[Any]] | None = None  # rows from the first failure on
        # events past the head record were never committed by a firewall
        self.limit = start.head_seq if start.head_seq is not None else 1 << 62


class ChainVerifier:
    """Feed rows ordered by (instance, seq); `finish()` returns the report."""

    def __init__(self, starts: dict[str, ChainStart] | None = None) -> None:
        self._starts = starts or {}
        self._done: list[ChainReport] = []
        self._chain: _Chain | None = None

    def feed(self, rows: Iterable[Sequence[Any]]) -> None:
        """Verify a batch of rows (the hot loop: one JSON encode and one sha256 per row)."""
        chain = self._chain
        encode = _encode
        sha = _sha256
        for row in rows:
            if chain is None or row[I_INSTANCE] != chain.instance:
                if chain is not None:
                    self._done.append(_finish(chain))
                instance = row[I_INSTANCE]
                chain = self._chain = _Chain(instance, self._starts.get(instance, ChainStart()))
            if chain.rest is not None:
                chain.rest.append(row)
                continue
            try:
                good = (
                    row[I_SEQ] == chain.seq + 1
                    and row[I_SEQ] <= chain.limit
                    and row[I_PREV] == chain.top
                    and sha((chain.top + encode(row[:N_HASHED])).encode()).hexdigest()
                    == row[I_HASH]
                )
            except (TypeError, ValueError, AttributeError):
                good = False  # a value of the wrong type (e.g. a BLOB) was written by hand
            if good:
                chain.seq += 1
                chain.top = row[I_HASH]
                chain.n += 1
                if chain.first_seq is None:
                    chain.first_seq = row[I_SEQ]
                chain.prev_row = chain.row
                chain.row = row
            else:
                chain.rest = [row]
        self._chain = chain

    def finish(self) -> VerifyReport:
        """The report for every chain seen, plus chains whose head exists but have no events."""
        if self._chain is not None:
            self._done.append(_finish(self._chain))
            self._chain = None
        seen = {c.instance for c in self._done}
        for instance, start in self._starts.items():
            if instance not in seen and start.head_seq is not None:
                self._done.append(_finish(_Chain(instance, start)))
        return VerifyReport(chains=tuple(sorted(self._done, key=lambda c: c.instance)))


def clean_report(
    instance: str, start: ChainStart, *, events: int, first_seq: int | None, seq: int, top: str
) -> ChainReport | None:
    """The report of a chain that verified row by row, or None if its ends need a closer look
    (the head record disagrees): the caller then re-verifies it with `ChainVerifier`."""
    if start.head_seq is None or seq != start.head_seq or top != start.head_hash:
        return None
    return ChainReport(
        instance=instance,
        events=events,
        first_seq=first_seq,
        last_seq=seq if events else None,
        checkpoint_seq=start.seq,
        head_hash=top,
    )


def verify_rows(
    rows: Iterable[Sequence[Any]], starts: dict[str, ChainStart] | None = None
) -> VerifyReport:
    """Verify rows ordered by (instance, seq) in one call."""
    verifier = ChainVerifier(starts)
    verifier.feed(rows)
    return verifier.finish()


def _as_int(value: Any) -> int:
    """A seq as stored; -1 for a value that is not an integer (written by hand)."""
    return value if type(value) is int else -1


def _self_ok(row: Sequence[Any]) -> bool:
    try:
        return bool(event_hash(row[I_PREV], row[:N_HASHED]) == row[I_HASH])
    except (TypeError, ValueError, AttributeError):
        return False


def _finish(chain: _Chain) -> ChainReport:
    broken = _classify(chain) if chain.rest is not None else _check_head(chain)
    return ChainReport(
        instance=chain.instance,
        events=chain.n,
        first_seq=chain.first_seq,
        last_seq=chain.seq if chain.n else None,
        checkpoint_seq=chain.start.seq,
        head_hash=chain.top,
        broken=broken,
    )


def _check_head(chain: _Chain) -> ChainBreak | None:
    start = chain.start
    if start.head_seq is None:
        if chain.n == 0:
            return None
        return ChainBreak(
            kind="deleted",
            seq=chain.seq,
            event_id=None,
            message="the chain's head record is missing (deleted); the chain cannot be "
            "checked for a truncated tail",
        )
    if chain.seq < start.head_seq:
        return ChainBreak(
            kind="deleted",
            seq=chain.seq + 1,
            event_id=None,
            message=f"events {chain.seq + 1}..{start.head_seq} are missing: the chain ends at "
            f"seq {chain.seq} but its head record says {start.head_seq} (tail deleted)",
        )
    if chain.seq == start.head_seq and chain.top != start.head_hash:
        return ChainBreak(
            kind="edited",
            seq=chain.seq,
            event_id=_id(chain.row),
            message=f"event seq {chain.seq} does not match the chain head record "
            "(edited and re-hashed)",
        )
    return None


def _id(row: Sequence[Any] | None) -> str | None:
    return None if row is None else str(row[I_ID])


def _classify(chain: _Chain) -> ChainBreak:
    """Explain the first failing row `chain.rest[0]`, looking at what follows it."""
    assert chain.rest is not None
    r, later = chain.rest[0], chain.rest[1:]
    exp_seq, exp_prev = chain.seq + 1, chain.top
    seq, rid = _as_int(r[I_SEQ]), str(r[I_ID])
    self_ok = _self_ok(r)
    later_hashes = {row[I_HASH] for row in later}
    head = chain.start.head_seq
    where = f"event {rid} (seq {seq})"

    if r[I_PREV] in later_hashes and r[I_PREV] != exp_prev:
        return ChainBreak(
            kind="reordered",
            seq=exp_seq,
            event_id=rid,
            message=f"{where} is out of order: the event it follows comes later in the chain",
        )
    if chain.row is not None and r[I_PREV] == chain.row[I_PREV] and r[I_PREV] != exp_prev:
        # r follows the event before the last verified one: that one was slipped in.
        ins = chain.row
        return ChainBreak(
            kind="inserted",
            seq=_as_int(ins[I_SEQ]),
            event_id=str(ins[I_ID]),
            message=f"event {ins[I_ID]} (seq {ins[I_SEQ]}) was inserted: the next event "
            "links past it",
        )
    if later and later[0][I_PREV] == exp_prev:
        return ChainBreak(
            kind="inserted",
            seq=exp_seq,
            event_id=rid,
            message=f"{where} was inserted: the next event links to the event before it",
        )
    if head is not None and seq > head and seq == exp_seq:
        return ChainBreak(
            kind="inserted",
            seq=seq,
            event_id=rid,
            message=f"{where} is past the chain head record (seq {head}): inserted "
            "(or the chain after it was re-hashed)",
        )
    if seq == exp_seq and r[I_PREV] == exp_prev and not self_ok:
        return ChainBreak(
            kind="edited",
            seq=seq,
            event_id=rid,
            message=f"{where} was edited: its content no longer matches its hash",
        )
    if seq > exp_seq and self_ok:
        missing = f"{exp_seq}" if seq == exp_seq + 1 else f"{exp_seq}..{seq - 1}"
        return ChainBreak(
            kind="deleted",
            seq=exp_seq,
            event_id=None,
            message=f"event(s) {missing} are missing before {where} (deleted)",
        )
    if self_ok and seq == exp_seq and chain.row is not None:
        prev = chain.row
        return ChainBreak(
            kind="edited",
            seq=_as_int(prev[I_SEQ]),
            event_id=str(prev[I_ID]),
            message=f"event {prev[I_ID]} (seq {prev[I_SEQ]}) was edited and re-hashed: "
            f"{where} recorded a different hash for it",
        )
    return ChainBreak(
        kind="edited",
        seq=exp_seq,
        event_id=rid,
        message=f"{where} was edited: it does not match its hash or its place in the chain",
    )
