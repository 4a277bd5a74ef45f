"""`mcpfw install`: put every stdio MCP server of an agent client behind the firewall."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from mcpfw.install import CLIENTS, InstallError, default_config_path, parse_jsonc, rewrite


def _mcpfw_executable() -> str:
    """An absolute path to mcpfw, since agent clients start servers without the user's PATH."""
    found = shutil.which("mcpfw")
    if found:
        return str(Path(found).resolve())
    candidate = Path(sys.executable).with_name("mcpfw")
    return str(candidate) if candidate.exists() else "mcpfw"


@click.command()
@click.option("--client", type=click.Choice(list(CLIENTS)), required=True, help="Agent client.")
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path),
              help="The client's MCP config file (default: the client's usual place).")  # fmt: skip
@click.option("--rules", multiple=True, type=click.Path(path_type=Path),
              help="Rules for the wrapped servers (absolute paths are written).")  # fmt: skip
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="An mcpfw.yaml for the wrapped servers.")  # fmt: skip
@click.option("--agent", help="Agent id the firewall reports (default: the client name).")
@click.option("--mcpfw", "mcpfw_path", help="Path of the mcpfw executable to write.")
@click.option("--dry-run", is_flag=True, help="Print the diff, change nothing.")
@click.option("--uninstall", is_flag=True, help="Restore the original server entries.")
def install(
    client: str,
    file_: Path | None,
    rules: tuple[Path, ...],
    config_file: Path | None,
    agent: str | None,
    mcpfw_path: str | None,
    dry_run: bool,
    uninstall: bool,
) -> None:
    """Wrap each stdio server in a client's MCP config with `mcpfw run` (or undo it)."""
    path = file_ or default_config_path(client)
    if not path.exists():
        raise click.ClickException(
            f"{path}: no such config file; pass the client's config with --file PATH"
        )
    try:
        text = path.read_text(encoding="utf-8")
        document = parse_jsonc(text, str(path))
        extra: list[str] = []
        if config_file is not None:
            extra += ["--config", str(config_file.resolve())]
        for rule_path in rules:
            extra += ["--rules", str(rule_path.resolve())]
        result = rewrite(
            document,
            client,
            mcpfw=mcpfw_path or _mcpfw_executable(),
            extra_args=extra,
            agent=agent,
            uninstall=uninstall,
            where=str(path),
        )
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror or exc}") from None
    for name, why in result.skipped:
        click.echo(f"skipped {name}: {why}", err=True)
    if not result.changed:
        click.echo(f"{path}: nothing to {'restore' if uninstall else 'wrap'}")
        return
    new_text = json.dumps(result.document, indent=2, ensure_ascii=False) + "\n"
    diff = difflib.unified_diff(
        text.splitlines(keepends=True),
        new_text.splitlines(keepends=True),
        fromfile=f"{path} (before)",
        tofile=f"{path} (after)",
    )
    click.echo("".join(diff), nl=False)
    verb = "restored" if uninstall else "wrapped"
    if dry_run:
        click.echo(f"dry run: would have {verb} {', '.join(result.changed)}; nothing written")
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = path.with_name(f"{path.name}.mcpfw-backup-{stamp}")
    try:
        shutil.copy2(path, backup)
        tmp = path.with_name(f".{path.name}.mcpfw-tmp")
        tmp.write_text(new_text, encoding="utf-8")
        os.replace(tmp, path)  # atomic: the client never reads a half-written file
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot write: {exc.strerror or exc}") from None
    if text != json.dumps(document, indent=2, ensure_ascii=False) + "\n" and (
        "//" in text or "/*" in text
    ):
        click.echo("note: comments in the original were not kept (see the backup)", err=True)
    click.echo(f"{verb} {', '.join(result.changed)}; backup at {backup}")
    click.echo(f"restart {client} to pick up the change")
