"""`mcpfw pins`: review and approve tool definitions (rug pulls, poisoned descriptions).

    mcpfw pins list [SERVER] [--drifted]        what is pinned, what drifted, what was found
    mcpfw pins diff SERVER TOOL                 approved vs latest definition, as a unified diff
    mcpfw pins approve SERVER [TOOL]            accept drift (or --file: pre-approve definitions)
    mcpfw pins reset [SERVER [TOOL]] [--all]    forget pins (a server with none left: re-pinned)
    mcpfw pins history [SERVER [TOOL]]          every pin event
    mcpfw pins scan FILE                        scan a tools/list JSON file for poisoning

Every command takes `--audit URL` (or `--config mcpfw.yaml`) like `mcpfw audit`. Rich output on
a terminal, plain text when piped, `--format json` for scripts. Text from upstream servers is
untrusted: it is printed with control and invisible characters escaped, never as markup.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcpfw.pins import (
    Pin,
    PinStatus,
    PinStore,
    PinStoreError,
    definition_diff,
    definition_digest,
    finding_dict,
    scan_tools,
)
from mcpfw.pins.chars import printable
from mcpfw.pins.open import open_pin_store

__all__ = ["pins"]

FORMAT_CHOICE = click.Choice(["text", "json"])
STATUS_STYLE = {"pinned": "green", "drifted": "bold red", "unapproved": "yellow"}
SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}
T = TypeVar("T")


def _console() -> Console:
    # piped output is read by grep and scripts, not a terminal: do not squeeze tables to 80
    return Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 160)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=True))


def _safe(text: str) -> Text:
    """Untrusted text as a rich Text: escaped, never interpreted as markup."""
    return Text(printable(text, None))


def _audit_url(audit: str | None, config: Path | None) -> str | None:
    """--audit, else the config's audit url, else $MCPFW_AUDIT, else the default database."""
    if audit:
        return audit
    if config is not None:
        from mcpfw.config import ConfigError, load_config

        try:
            url = load_config(config).audit.url
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        if url:
            return url
    return os.environ.get("MCPFW_AUDIT") or None


def _run(
    audit: str | None,
    config: Path | None,
    work: Callable[[PinStore], Awaitable[T]],
    *,
    create: bool = False,
) -> T:
    url = _audit_url(audit, config)

    async def main() -> T:
        async with open_pin_store(url, create=create) as store:
            return await work(store)

    try:
        return anyio.run(main)
    except PinStoreError as exc:
        raise click.ClickException(str(exc)) from None


def _store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Take the audit database from this mcpfw.yaml.",
    )(f)
    return click.option(
        "--audit",
        "audit",
        metavar="PATH_OR_URL",
        default=None,
        help="Audit database: a file path, sqlite:/// or postgresql:// URL "
        "(default: the config's, else $MCPFW_AUDIT, else ~/.local/share/mcpfw/audit.db).",
    )(f)


def _actor() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _pin_dict(pin: Pin) -> dict[str, Any]:
    return {
        "server": pin.server,
        "tool": pin.tool,
        "status": str(pin.status),
        "digest": pin.digest,
        "seen_digest": pin.seen_digest,
        "approved_by": pin.approved_by,
        "approved_at": pin.approved_at,
        "first_seen": pin.first_seen,
        "seen_at": pin.seen_at,
        "findings": list(pin.findings),
    }


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@click.group()
def pins() -> None:
    """Review and approve pinned tool definitions (rug pulls, poisoned descriptions)."""


@pins.command("list")
@click.argument("server", required=False)
@click.option(
    "--drifted", is_flag=True, help="Only tools whose definition changed or awaits approval."
)
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
@_store_options
def list_(
    server: str | None, drifted: bool, fmt: str, audit: str | None, config: Path | None
) -> None:
    """List pinned tools with their status and scanner findings."""
    found = _run(audit, config, lambda store: store.pins(server))
    if drifted:
        found = [p for p in found if p.status is not PinStatus.PINNED]
    if fmt == "json":
        _emit_json([_pin_dict(p) for p in found])
        return
    console = _console()
    if not found:
        console.print("no pinned tools" + (f" for server {server!r}" if server else ""))
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("server")
    table.add_column("tool")
    table.add_column("status", no_wrap=True, min_width=10)
    table.add_column("digest", no_wrap=True)
    table.add_column("approved by")
    table.add_column("last seen", no_wrap=True)
    table.add_column("findings", no_wrap=True)
    for p in found:
        status = str(p.status)
        codes = sorted({str(f.get("code")) for f in p.findings})
        table.add_row(
            _safe(p.server),
            _safe(p.tool),
            Text(status, style=STATUS_STYLE.get(status, "")),
            p.digest[:8] or "-",
            _safe(p.approved_by or "-"),
            _when(p.seen_at)[:16],
            Text("\n".join(codes) or "-", style="yellow" if codes else "dim"),
        )
    console.print(table)
    waiting = sum(1 for p in found if p.status is not PinStatus.PINNED)
    if waiting:
        console.print(
            Text(
                f"{waiting} tool(s) changed or await approval: review with "
                "`mcpfw pins diff SERVER TOOL`, accept with `mcpfw pins approve SERVER TOOL`",
                style="bold red",
            )
        )


@pins.command()
@click.argument("server")
@click.argument("tool")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
@_store_options
def diff(server: str, tool: str, fmt: str, audit: str | None, config: Path | None) -> None:
    """Show what changed between the approved and the latest definition of TOOL."""
    pin = _run(audit, config, lambda store: store.pin(server, tool))
    if pin is None:
        raise click.ClickException(
            f"no pin for tool {tool!r} of server {server!r} (see `mcpfw pins list {server}`)"
        )
    latest = pin.seen_definition if pin.seen_digest else pin.definition
    lines = definition_diff(
        pin.definition,
        latest,
        old_label=f"approved {pin.digest[:12] or '(none)'}",
        new_label=f"seen {pin.seen_digest[:12] or '(none)'}",
    )
    if fmt == "json":
        _emit_json({**_pin_dict(pin), "diff": lines})
        return
    console = _console()
    status = str(pin.status)
    console.print(
        Text.assemble(
            (f"{printable(server)} / {printable(tool)}: ", "bold"),
            (status, STATUS_STYLE.get(status, "")),
        )
    )
    if not lines:
        console.print("the latest definition is the approved one")
    for line in lines:
        style = ""
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        console.print(Text(line, style=style))
    for f in pin.findings:
        severity = str(f.get("severity", ""))
        console.print(
            Text.assemble(
                (f"{severity:>6} ", SEVERITY_STYLE.get(severity, "")),
                (f"{f.get('code')} ", "bold"),
                (f"at {f.get('where') or '/'}: ", "dim"),
                printable(str(f.get("excerpt", "")), None, backslash=False),
            )
        )
    if pin.status is not PinStatus.PINNED:
        console.print(
            f"accept with: mcpfw pins approve {server} {tool} --digest {pin.seen_digest[:12]}"
        )


def load_tools_file(path: str) -> list[dict[str, Any]]:
    """Tool definitions from a JSON file: a tools/list result or response, a list, or one tool."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    if isinstance(data, Mapping) and isinstance(data.get("result"), Mapping):
        data = data["result"]  # a whole JSON-RPC response
    if isinstance(data, Mapping) and "tools" in data:
        data = data["tools"]
    elif isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not all(
        isinstance(t, Mapping) and isinstance(t.get("name"), str) for t in data
    ):
        raise click.ClickException(
            f'{path}: expected a tools/list result ({{"tools": [...]}}), a list of tool '
            "definitions, or one tool definition, each with a string `name`"
        )
    return [dict(t) for t in data]


@pins.command()
@click.argument("server")
@click.argument("tool", required=False)
@click.option("--digest", "digest", metavar="PREFIX", default="",
              help="Only accept a latest definition whose digest starts with PREFIX "
              "(the one you reviewed with `pins diff`).")  # fmt: skip
@click.option("--file", "file", metavar="PATH", default=None,
              help="Pre-approve the definitions in this JSON file (a tools/list result, "
              "a list of tools or one tool; '-' for stdin).")  # fmt: skip
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
@_store_options
def approve(
    server: str,
    tool: str | None,
    digest: str,
    file: str | None,
    fmt: str,
    audit: str | None,
    config: Path | None,
) -> None:
    """Accept the latest definition of TOOL (or of every changed tool of SERVER)."""
    actor = _actor()
    if file is not None:
        tools = load_tools_file(file)
        if tool is not None:
            tools = [t for t in tools if t.get("name") == tool]
            if not tools:
                raise click.ClickException(f"{file}: no tool named {tool!r}")
        names = _run(
            audit, config, lambda store: store.preapprove(server, tools, actor=actor), create=True
        )
        result = [
            {"server": server, "tool": t["name"], "digest": definition_digest(t)} for t in tools
        ]
        if fmt == "json":
            _emit_json({"approved": result})
        else:
            for item in result:
                click.echo(f"pre-approved {server}/{printable(item['tool'])} {item['digest'][:12]}")
        if not names:
            raise click.ClickException("nothing to approve")
        return
    changed = _run(
        audit,
        config,
        lambda store: store.approve(server, tool, actor=actor, digest_prefix=digest),
    )
    if fmt == "json":
        _emit_json(
            {
                "approved": [
                    {"server": p.server, "tool": p.tool, "digest": p.seen_digest} for p in changed
                ]
            }
        )
    else:
        for p in changed:
            click.echo(f"approved {printable(p.server)}/{printable(p.tool)} {p.seen_digest[:12]}")
    if not changed:
        what = f"tool {tool!r} of server {server!r}" if tool else f"server {server!r}"
        hint = " whose digest starts with " + repr(digest) if digest else ""
        raise click.ClickException(
            f"nothing to approve for {what}: no changed or unapproved definition{hint} "
            "(see `mcpfw pins list --drifted`)"
        )


@pins.command()
@click.argument("server", required=False)
@click.argument("tool", required=False)
@click.option("--all", "all_", is_flag=True, help="Forget every pin of every server.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_store_options
def reset(
    server: str | None,
    tool: str | None,
    all_: bool,
    yes: bool,
    audit: str | None,
    config: Path | None,
) -> None:
    """Forget pins. A server with no pins left has its next listing pinned again (trust on
    first use); a single forgotten tool of a server that keeps other pins needs approval."""
    if server is None and not all_:
        raise click.UsageError("name a SERVER (and optionally a TOOL), or pass --all")
    what = (
        "every pin"
        if server is None
        else (f"the pin of {tool!r} on {server!r}" if tool else f"every pin of server {server!r}")
    )
    if not yes:
        after = (
            "its next definition will need `mcpfw pins approve`"
            if tool
            else "the next listing will be trusted on first use"
        )
        click.confirm(f"Forget {what}? {after}", abort=True)
    count = _run(audit, config, lambda store: store.reset(server, tool, actor=_actor()))
    click.echo(f"forgot {count} pin(s)")


@pins.command()
@click.argument("server", required=False)
@click.argument("tool", required=False)
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
@_store_options
def history(
    server: str | None, tool: str | None, fmt: str, audit: str | None, config: Path | None
) -> None:
    """Every pin event: first pins, drift, approvals, resets."""
    events = _run(audit, config, lambda store: store.events(server, tool))
    if fmt == "json":
        _emit_json([{k: v for k, v in e.items() if k != "detail"} for e in events])
        return
    console = _console()
    if not events:
        console.print("no pin events")
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("time", "server", "tool", "event", "digest", "previous", "by"):
        table.add_column(column)
    for e in events:
        kind = str(e["kind"])
        table.add_row(
            _when(e["time"]),
            _safe(str(e["server"])),
            _safe(str(e["tool"])),
            Text(kind, style="bold red" if kind in ("drift", "duplicate") else ""),
            str(e["digest"])[:12] or "-",
            str(e["previous_digest"])[:12] or "-",
            _safe(str(e["actor"]) or "-"),
        )
    console.print(table)


@pins.command()
@click.argument("file")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
def scan(file: str, fmt: str) -> None:
    """Scan the tool definitions in FILE for poisoning; exit 1 if anything is found."""
    tools = load_tools_file(file)
    found = scan_tools(tools)
    if fmt == "json":
        _emit_json({name: [finding_dict(f) for f in fs] for name, fs in found.items()})
    else:
        console = _console()
        for name, findings in found.items():
            for f in findings:
                console.print(
                    Text.assemble(
                        (f"{f.severity:>6} ", SEVERITY_STYLE.get(str(f.severity), "")),
                        (f"{printable(name)} ", "bold"),
                        (f"{f.code} ", "bold"),
                        (f"at {f.where or '/'}: ", "dim"),
                        f.excerpt,
                    )
                )
        total = sum(len(fs) for fs in found.values())
        console.print(f"{len(tools)} tool(s) scanned, {total} finding(s)")
    if found:
        sys.exit(1)
