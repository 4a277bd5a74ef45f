"""`mcpfw serve`: the streamable-HTTP firewall for many authenticated agents.

    mcpfw serve --config mcpfw.yaml [--host 127.0.0.1] [--port 8765]

Everything comes from the config file (upstreams, rules, audit, `server:` with auth and
limits); `--host`/`--port`/`--audit` override it. A user error (bad config, rules that do not
compile, no credentials configured, port taken) is a message and exit code 1, never a
traceback.
"""

from __future__ import annotations

import logging
import sys

import anyio
import click

from mcpfw.config import ConfigError, load_config

__all__ = ["serve"]


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="mcpfw.yaml with upstreams, rules, audit and server.auth.",
)
@click.option("--host", default=None, help="Address to listen on [config server.host, 127.0.0.1].")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port [config, 8765].")
@click.option(
    "--audit", "audit_url", default=None, help="Audit database URL or file (overrides config)."
)
@click.option(
    "--instance", default=None, help="Audit chain id of this instance [host+pid derived]."
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_default=True,
)
def serve(
    config_path: str,
    host: str | None,
    port: int | None,
    audit_url: str | None,
    instance: str | None,
    log_level: str,
) -> None:
    """Serve every configured upstream over streamable HTTP at /mcp/<server> and /mcp."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        sys.exit(1)
    logging.basicConfig(
        level=log_level.upper(),
        format="mcpfw %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    bind_host = host or config.server.host
    bind_port = config.server.port if port is None else port
    from mcpfw.proxy.http_serve import ServeError, bind_socket, open_http_firewall, run_uvicorn

    async def main() -> None:
        async with open_http_firewall(
            config, host=bind_host, instance=instance, audit_url=audit_url
        ) as firewall:
            sock = bind_socket(bind_host, bind_port)
            actual = sock.getsockname()[1]
            paths = ", ".join(["/mcp", *(f"/mcp/{n}" for n in config.upstreams)])
            click.echo(f"mcpfw serve: listening on http://{bind_host}:{actual} ({paths})", err=True)
            await run_uvicorn(
                firewall.app(),
                sock,
                read_timeout_s=config.server.read_timeout_s,
                log_level="warning",
            )

    from mcpfw.audit import AuditError
    from mcpfw.cli.loop import has_uvloop

    try:
        anyio.run(main, backend_options={"use_uvloop": has_uvloop()})
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        known = _known_error(exc, (ServeError, AuditError))
        if known is None:
            raise
        click.echo(f"mcpfw serve: {known}", err=True)
        sys.exit(1)


def _known_error(exc: BaseException, kinds: tuple[type[Exception], ...]) -> Exception | None:
    """The user-facing error inside `exc` (task groups wrap errors in exception groups)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _known_error(inner, kinds)
            if found is not None:
                return found
    return None
