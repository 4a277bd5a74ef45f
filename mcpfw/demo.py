"""`make demo`: a scripted agent session through the firewall, then the audit log.

    python -m mcpfw.demo [--keep]

Sets up a throwaway workspace, starts `mcpfw run` (a real subprocess, exactly as an agent would)
in front of the fixture filesystem server with the shipped `rules/`, and drives it with a real
MCP SDK client: allowed reads, denied secret and traversal reads, an allowed write, and two
moves that the rules send to a human (the scripted human accepts one and declines the other).
Then it shows the audit log through `mcpfw audit list` and `mcpfw audit verify`, and prints
the line to put in an agent's config. Needs nothing but this package: SQLite is the default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import click

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
FS_SERVER = ROOT / "fixtures" / "servers" / "fs_server.py"
MCPFW = [sys.executable, "-c", "from mcpfw.cli import main; main()"]

# (tool, arguments, what the scripted human answers if asked, why this call is in the demo)
SCRIPT: list[tuple[str, dict[str, Any], str, str]] = [
    ("list_directory", {"path": "/workspace"}, "", "look around the workspace"),
    ("read_file", {"path": "/workspace/README.md"}, "", "read a file inside the workspace"),
    ("read_file", {"path": "/workspace/.env"}, "", "read the secrets file"),
    ("read_file", {"path": "/workspace/../etc/passwd"}, "", "escape the workspace (traversal)"),
    ("write_file", {"path": "/workspace/notes.md", "content": "todo: ship"}, "", "write a note"),
    (
        "move_file",
        {"source": "/workspace/notes.md", "destination": "/workspace/notes-old.md"},
        "accept",
        "rename a file (the rules ask a human; they accept)",
    ),
    (
        "move_file",
        {"source": "/workspace/README.md", "destination": "/workspace/gone.md"},
        "decline",
        "rename another file (the human declines)",
    ),
]


def _say(text: str = "", **style: Any) -> None:
    click.echo(click.style(text, **style) if style else text)


def _workspace(base: Path) -> Path:
    root = base / "workspace"
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("# demo project\nThe agent may read this.\n")
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / ".env").write_text("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
    return root


async def _session(argv: list[str], answers: list[str]) -> tuple[str, list[tuple[str, str]]]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp_types import ElicitResult

    async def human(context: Any, params: Any) -> ElicitResult:
        answer = answers.pop(0)
        _say("    the firewall asks the human:", fg="magenta")
        for line in str(params.message).splitlines():
            _say(f"      | {line}", fg="magenta")
        _say(f"    the human answers: {answer}", fg="magenta")
        return ElicitResult(action=answer)  # type: ignore[arg-type]

    server = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
    results: list[tuple[str, str]] = []
    with anyio.fail_after(60):
        async with Client(server, elicitation_callback=human) as client:
            era = client.protocol_version
            for tool, args, _, why in SCRIPT:
                _say()
                _say(f"agent: {why}", bold=True)
                _say(f"    tools/call {tool} {json.dumps(args)}")
                result = await client.call_tool(tool, args)
                text = " ".join(getattr(c, "text", "") for c in result.content).strip()
                if result.is_error and text.startswith("mcpfw"):
                    _say(f"    BLOCKED  {text}", fg="red")
                    results.append((tool, "blocked"))
                elif result.is_error:
                    _say(f"    upstream error: {text}", fg="yellow")
                    results.append((tool, "error"))
                else:
                    shown = text if len(text) < 120 else text[:117] + "..."
                    _say(f"    ALLOWED  {shown!r}", fg="green")
                    results.append((tool, "allowed"))
    return era, results


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mcpfw.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="mcpfw-demo-"))
    try:
        workspace = _workspace(base)
        audit = base / "audit.db"
        upstream = [sys.executable, str(FS_SERVER), str(workspace), "--mount", "/workspace"]
        run = [
            *MCPFW, "run", "--rules", str(RULES), "--agent", "demo-agent", "--role", "editor",
            "--audit", str(audit), "--server", "filesystem", "--", *upstream,
        ]  # fmt: skip
        _say("mcpfw demo: an agent session through the firewall", bold=True)
        _say(f"  workspace  {workspace}  (the server sees it as /workspace)")
        _say(f"  rules      {RULES}/  (the shipped packs)")
        _say(f"  audit log  {audit}")
        _say("  agent      demo-agent, role editor")
        answers = [answer for _, _, answer, _ in SCRIPT if answer]
        era, results = anyio.run(_session, run, answers)
        _say()
        _say(f"(the client and the firewall spoke MCP {era})")
        _say()
        _say("The audit log (mcpfw audit list):", bold=True)
        audit_cmd = [*MCPFW, "audit"]
        subprocess.run(
            [*audit_cmd, "list", "--audit", str(audit), "--limit", "20"], check=False, timeout=60
        )
        subprocess.run([*audit_cmd, "verify", "--audit", str(audit)], check=False, timeout=60)
        exe = shutil.which("mcpfw") or str(Path(sys.executable).with_name("mcpfw"))
        args = ["run", "--rules", str(RULES), "--agent", "claude-desktop", "--", "npx", "-y"]
        args += ["@modelcontextprotocol/server-filesystem", "/workspace"]
        entry = {"mcpServers": {"filesystem": {"command": exe, "args": args}}}
        _say()
        _say(
            "Put your agent's MCP servers behind mcpfw, e.g. in claude_desktop_config.json:",
            bold=True,
        )
        _say(json.dumps(entry, indent=2))
        _say("or let mcpfw rewrite the config for you (with a backup and a diff):", bold=True)
        _say(f"  {exe} install --client claude-desktop --rules {RULES}")
        _say()
        allowed = sum(1 for _, r in results if r == "allowed")
        blocked = sum(1 for _, r in results if r == "blocked")
        _say(
            f"demo finished in {time.monotonic() - started:.1f} s: {allowed} calls allowed, "
            f"{blocked} blocked, every decision in the audit log."
        )
        expected = ["allowed", "allowed", "blocked", "blocked", "allowed", "allowed", "blocked"]
        return 0 if [r for _, r in results] == expected else 1
    finally:
        if opts.keep:
            _say(f"(kept {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
