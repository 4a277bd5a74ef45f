"""Verify and prune over a whole audit database (the maintenance side of the read API).

Verification takes one consistent snapshot. On a SQLite file it reads with a plain `sqlite3`
connection in one thread hop and lets SQLite build each row's canonical text (`json_array`);
elsewhere rows stream through SQLAlchemy. Either way `ChainVerifier` (chain.py) decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcpfw.audit.chain import (
    GENESIS,
    ChainReport,
    ChainStart,
    ChainVerifier,
    VerifyReport,
    clean_report,
    event_hash,
)
from mcpfw.audit.engine import EngineInfo
from mcpfw.audit.errors import AuditError
from mcpfw.audit.events import time_text
from mcpfw.audit.schema import HASHED_COLUMNS, audit_chains, audit_checkpoints, audit_events
from mcpfw.model import utcnow

__all__ = ["ChainPrune", "PruneResult", "prune_database", "verify_database"]

_C = audit_events.c
_VERIFY_COLUMNS = [audit_events.c[name] for name in (*HASHED_COLUMNS, "prev_hash", "hash")]


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainPrune:
    """What prune did (or would do) to one chain."""

    instance: str
    pruned: int
    checkpoint_seq: int
    checkpoint_hash: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PruneResult:
    """What prune did (or would do)."""

    before: datetime
    dry_run: bool
    chains: tuple[ChainPrune, ...] = ()

    @property
    def pruned(self) -> int:
        """Events deleted (or that would be)."""
        return sum(c.pruned for c in self.chains)


async def verify_database(engine: AsyncEngine, info: EngineInfo, *, batch: int) -> VerifyReport:
    """Verify every chain of the database behind `engine`."""
    if info.sqlite_file:  # a file: read it with sqlite3 in one thread hop
        try:
            return await asyncio.to_thread(_verify_sqlite_file, info.sqlite_file, batch)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit database {info.url}: {exc}") from exc
    try:
        async with engine.connect() as conn:
            if info.is_postgres:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():  # one snapshot: heads and events agree
                starts = await _starts(conn)
                verifier = ChainVerifier(starts)
                query = (
                    select(*_VERIFY_COLUMNS)
                    .order_by(_C.instance, _C.seq)
                    .execution_options(yield_per=batch)
                )
                result = await conn.stream(query)
                async for part in result.partitions(batch):
                    verifier.feed(part)
                return verifier.finish()
    except SQLAlchemyError as exc:
        raise AuditError(f"cannot read the audit database {info.url}: {exc}") from exc


async def prune_database(
    engine: AsyncEngine, info: EngineInfo, before: datetime, *, dry_run: bool
) -> PruneResult:
    """Delete each chain's prefix older than `before`, recording checkpoints (no verify)."""
    cutoff = time_text(before)
    chains: list[ChainPrune] = []
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                starts = await _starts(conn)
                instances = (await conn.execute(select(_C.instance).distinct())).scalars().all()
                for instance in sorted(instances):
                    done = await _prune_chain(
                        conn, instance, cutoff, starts.get(instance), dry_run=dry_run
                    )
                    if done is not None:
                        chains.append(done)
                if dry_run:
                    await conn.rollback()
    except SQLAlchemyError as exc:
        raise AuditError(f"cannot prune the audit database {info.url}: {exc}") from exc
    return PruneResult(before=before, dry_run=dry_run, chains=tuple(chains))


_LATEST_CHECKPOINTS = (
    "SELECT c.instance, c.seq, c.hash FROM audit_checkpoints c JOIN "
    "(SELECT instance, max(seq) AS seq FROM audit_checkpoints GROUP BY instance) m "
    "ON c.instance = m.instance AND c.seq = m.seq"
)


def _verify_sqlite_file(path: str, batch: int) -> VerifyReport:
    try:
        return _verify_sqlite_once(path, batch, tolerant=False)
    except sqlite3.OperationalError:
        # text that is not UTF-8 (written by hand) stops a plain read: decode it loosely so
        # those rows fail their hash and the break is reported instead
        return _verify_sqlite_once(path, batch, tolerant=True)


def _verify_sqlite_once(path: str, batch: int, *, tolerant: bool) -> VerifyReport:
    # One read transaction (a consistent snapshot) on a plain sqlite3 connection, in one thread
    # hop. Fast path: SQLite builds each row's canonical JSON array itself (`json_array`, the
    # same text our encoder makes), so Python only fetches five values and hashes. Any row that
    # does not match is re-checked from its columns with our own encoder, and a chain that
    # really breaks is re-verified row by row by `ChainVerifier`, which explains the break.
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    if tolerant:
        conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    try:
        conn.execute("BEGIN")
        heads = conn.execute("SELECT instance, seq, hash FROM audit_chains").fetchall()
        checkpoints = conn.execute(_LATEST_CHECKPOINTS).fetchall()
        starts = _make_starts(heads, checkpoints)
        try:
            reports = _fast_verify(conn, starts, batch)
        except sqlite3.Error:  # e.g. a BLOB written by hand: json_array refuses it
            reports = {}
            chains = [r[0] for r in conn.execute("SELECT DISTINCT instance FROM audit_events")]
            for instance in {*starts, *chains}:
                reports[instance] = _full_chain(conn, instance, starts, batch)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return VerifyReport(chains=tuple(reports[k] for k in sorted(reports)))


_FULL_COLUMNS = ", ".join(c.name for c in _VERIFY_COLUMNS)
_FAST_QUERY = (
    f"SELECT instance, seq, prev_hash, hash, json_array({', '.join(HASHED_COLUMNS)}) "
    "FROM audit_events ORDER BY instance, seq"
)


def _full_chain(
    conn: sqlite3.Connection, instance: str, starts: dict[str, ChainStart], batch: int
) -> ChainReport:
    verifier = ChainVerifier({instance: starts.get(instance, ChainStart())})
    cur = conn.execute(
        f"SELECT {_FULL_COLUMNS} FROM audit_events WHERE instance = ? ORDER BY seq", (instance,)
    )
    while rows := cur.fetchmany(batch):
        verifier.feed(rows)
    (report,) = verifier.finish().chains
    return report


def _fast_verify(
    conn: sqlite3.Connection, starts: dict[str, ChainStart], batch: int
) -> dict[str, ChainReport]:
    reports: dict[str, ChainReport] = {}
    sha = hashlib.sha256
    instance: str | None = None
    start = ChainStart()
    seq, top, n, first, limit, good = 0, GENESIS, 0, None, 0, True

    def close() -> None:
        if instance is None:
            return
        clean = clean_report(instance, start, events=n, first_seq=first, seq=seq, top=top)
        if not good or clean is None:
            reports[instance] = _full_chain(conn, instance, starts, batch)
        else:
            reports[instance] = clean

    cur = conn.execute(_FAST_QUERY)
    while rows := cur.fetchmany(batch):
        for row_instance, row_seq, prev, digest, canon in rows:
            if row_instance != instance:
                close()
                instance = row_instance
                start = starts.get(instance, ChainStart())
                seq, top, n, first, good = start.seq, start.hash, 0, None, True
                limit = start.head_seq if start.head_seq is not None else 1 << 62
            if not good:
                continue
            try:
                good = (
                    row_seq == seq + 1
                    and row_seq <= limit
                    and prev == top
                    and (
                        _sha_hex(sha, prev + canon) == digest
                        or _recheck(conn, row_instance, row_seq, prev, digest)
                    )
                )
            except (TypeError, ValueError):  # a value of the wrong type, written by hand
                good = False
            if good:
                seq, top, n = row_seq, digest, n + 1
                if first is None:
                    first = row_seq
            else:
                good = False
    close()
    for other, other_start in starts.items():  # head records whose events are all gone
        if other not in reports and other_start.head_seq is not None:
            reports[other] = _full_chain(conn, other, starts, batch)
    return reports


def _sha_hex(sha: Any, text: str) -> str:
    try:
        return str(sha(text.encode()).hexdigest())
    except UnicodeEncodeError:  # not UTF-8 in the database: cannot match any stored hash
        return ""


def _recheck(conn: sqlite3.Connection, instance: str, seq: int, prev: str, digest: str) -> bool:
    row = conn.execute(
        f"SELECT {_FULL_COLUMNS} FROM audit_events WHERE instance = ? AND seq = ?",
        (instance, seq),
    ).fetchone()
    if row is None:
        return False
    try:
        return bool(event_hash(prev, row[: len(HASHED_COLUMNS)]) == digest)
    except (TypeError, ValueError):
        return False


def _int(value: Any) -> int:
    # -1 for a seq that is not an integer (written by hand): that chain then fails to verify
    return value if type(value) is int else -1


def _make_starts(
    heads: Iterable[Sequence[Any]], checkpoints: Iterable[Sequence[Any]]
) -> dict[str, ChainStart]:
    head_map = {str(r[0]): (_int(r[1]), str(r[2])) for r in heads}
    cp_map = {str(r[0]): (_int(r[1]), str(r[2])) for r in checkpoints}
    starts: dict[str, ChainStart] = {}
    for instance in set(head_map) | set(cp_map):
        cp = cp_map.get(instance)
        head = head_map.get(instance)
        starts[instance] = ChainStart(
            seq=cp[0] if cp else 0,
            hash=cp[1] if cp else GENESIS,
            head_seq=head[0] if head else None,
            head_hash=head[1] if head else None,
        )
    return starts


async def _starts(conn: AsyncConnection) -> dict[str, ChainStart]:
    heads = (
        await conn.execute(select(audit_chains.c.instance, audit_chains.c.seq, audit_chains.c.hash))
    ).all()
    checkpoints = (await conn.execute(text(_LATEST_CHECKPOINTS))).all()
    return _make_starts(heads, checkpoints)


async def _prune_chain(
    conn: AsyncConnection, instance: str, cutoff: str, start: ChainStart | None, *, dry_run: bool
) -> ChainPrune | None:
    in_chain = _C.instance == instance
    first_kept = (
        await conn.execute(select(func.min(_C.seq)).where(in_chain, _C.time >= cutoff))
    ).scalar()
    if first_kept is None:
        last = (await conn.execute(select(func.max(_C.seq)).where(in_chain))).scalar()
        if last is None:
            return None
        upto = int(last)
    else:
        upto = int(first_kept) - 1
    if upto <= (start.seq if start else 0):
        return None
    row = (await conn.execute(select(_C.hash, _C.time).where(in_chain, _C.seq == upto))).first()
    if row is None:
        raise AuditError(f"chain {instance!r} has no event {upto}: run `mcpfw audit verify`")
    count = int(
        (await conn.execute(select(func.count()).where(in_chain, _C.seq <= upto))).scalar() or 0
    )
    if not dry_run:
        await conn.execute(
            insert(audit_checkpoints).values(
                instance=instance,
                seq=upto,
                hash=row.hash,
                event_time=row.time,
                pruned=count,
                created=time_text(utcnow()),
            )
        )
        await conn.execute(delete(audit_events).where(in_chain, _C.seq <= upto))
    return ChainPrune(
        instance=instance, pruned=count, checkpoint_seq=upto, checkpoint_hash=row.hash
    )
