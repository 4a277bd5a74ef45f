"""`mcpfw.yaml`: one file that keeps the agent-config line short.

    rules: rules/                      # file(s) or directories, relative to this file
    agent: claude-desktop              # the default agent for `mcpfw run`
    agents:
      claude-desktop: {roles: [developer], claims: {team: platform}, record: true}
    audit: {url: ./audit.db, on_failure: deny, redact: [/password], detect_secrets: true}
    limits: {max_depth: 32, max_bytes: 262144, max_items: 10000}
    mode: enforce                      # enforce | monitor
    hide_denied: false
    ask: {timeout_s: 120}
    pins: warn                         # off | warn | block
    pins_trust_on_first_use: true      # false: every tool needs `mcpfw pins approve`
    sanitize_descriptions: true
    record: false
    upstreams:
      fs: {command: npx, args: [-y, "@modelcontextprotocol/server-filesystem", /work]}
      api: {url: "https://mcp.example.com/mcp", headers: {Authorization: "Bearer ${API_TOKEN}"}}
    server:
      host: 127.0.0.1
      port: 8765
      auth:
        jwt: {jwks_url: ..., issuer: ..., audience: ...}
        api_keys: [{sha256: ..., agent: ci-bot, roles: [ci]}]

Every problem in the file is reported at once as `file:line:column: message`, with a
did-you-mean for misspelt keys. `${VAR}` in upstream env, headers and url is taken from the
environment of the firewall; a missing variable is an error, never an empty string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mcpfw.policy.yamlsrc import did_you_mean
from mcpfw.yamlpos import Located, Position, YamlSyntaxError, load_located

__all__ = [
    "AgentConfig",
    "ApiKeyConfig",
    "AuditSettings",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "JwtConfig",
    "LimitsConfig",
    "ServerConfig",
    "UpstreamConfig",
    "load_config",
]

T = TypeVar("T")
PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file."""

    position: Position
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"


class ConfigError(Exception):
    """The config file cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = tuple(sorted(issues, key=lambda i: (i.position.line, i.position.column)))
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig:
    id: str
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    record: bool | None = None  # None: use the top-level `record`


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditSettings:
    url: str | None = None  # None: mcpfw.audit.default_audit_url()
    on_failure: str = "deny"  # deny | allow
    redact: tuple[str, ...] = ()  # JSON pointers into the call's arguments
    detect_secrets: bool = True
    timeout_s: float = 30.0  # a commit slower than this denies the call (locked/hung database)


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig:
    max_depth: int = 32
    max_bytes: int = 262_144
    max_items: int = 10_000


@dataclass(frozen=True, kw_only=True, slots=True)
class UpstreamConfig:
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 300.0  # per-call upstream timeout
    # `mcpfw serve`: upstream sessions (each agent session sticks to one); default 4 for a URL,
    # 1 for a command (one process)
    sessions: int = 1


MAX_UPSTREAM_SESSIONS = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class JwtConfig:
    jwks_url: str | None = None
    public_key: str | None = None  # PEM text (or read from public_key_file)
    secret: str | None = None  # HS256 shared secret (or from secret_env)
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ()
    agent_claim: str = "sub"
    roles_claim: str = "roles"


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiKeyConfig:
    sha256: str
    agent: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthConfig:
    jwt: JwtConfig | None = None
    api_keys: tuple[ApiKeyConfig, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = None  # how clients reach us (for protected-resource metadata)
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    max_json_depth: int = 64
    read_timeout_s: float = 30.0
    auth: AuthConfig = field(default_factory=AuthConfig)


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """A validated `mcpfw.yaml`. Paths are already resolved against the file's folder."""

    source: Path | None = None
    rules: tuple[Path, ...] = ()
    engine: str = "auto"
    agent: str | None = None
    agents: Mapping[str, AgentConfig] = field(default_factory=dict)
    audit: AuditSettings = field(default_factory=AuditSettings)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    mode: str = "enforce"  # enforce | monitor
    hide_denied: bool = False
    ask_timeout_s: float = 120.0
    pins: str = "warn"  # off | warn | block
    pins_trust_on_first_use: bool = True  # pin a server's first listing; False: approve each
    sanitize_descriptions: bool = True
    record: bool = False
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)

    def agent_config(self, agent_id: str) -> AgentConfig:
        """The configured agent, or a bare one with no roles."""
        return self.agents.get(agent_id) or AgentConfig(id=agent_id)

    def records(self, agent_id: str) -> bool:
        """Whether sessions of this agent are recorded."""
        own = self.agent_config(agent_id).record
        return self.record if own is None else own


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Reader:
    """Walks the located YAML tree, collecting every issue instead of stopping at the first."""

    def __init__(self, doc: Located, base: Path, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.base = base
        self.environ = environ
        self.issues: list[ConfigIssue] = []

    def fail(self, path: PathKey, message: str, *, key: bool = False) -> None:
        where = self.doc.key_at(path) if key else self.doc.at(path)
        self.issues.append(ConfigIssue(where, message))

    def mapping(self, value: Any, path: PathKey, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"{_name(path)} must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                self.fail((*path, key), f"unknown field {key!r} in {_name(path)}{hint}", key=True)
        return value

    def typed(self, value: Any, path: PathKey, kind: type[T], default: T) -> T:
        if value is None:
            return default
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            self.fail(path, f"{_name(path)} must be {kind.__name__}, got {_kind(value)}")
            return default
        return value  # type: ignore[no-any-return]

    def optional(self, value: Any, path: PathKey, kind: type[T]) -> T | None:
        return None if value is None else self.typed(value, path, kind, None)

    def positive(self, value: Any, path: PathKey, kind: type[T], default: T) -> T:
        got = self.typed(value, path, kind, default)
        if isinstance(got, int | float) and got <= 0:
            self.fail(path, f"{_name(path)} must be greater than 0, got {got}")
            return default
        return got

    def choice(self, value: Any, path: PathKey, choices: tuple[str, ...], default: str) -> str:
        got = self.typed(value, path, str, default)
        if got not in choices:
            hint = did_you_mean(got, choices)
            self.fail(path, f"{_name(path)} must be one of {', '.join(choices)}, got {got!r}{hint}")
            return default
        return got

    def strings(self, value: Any, path: PathKey) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(path, f"{_name(path)} must be a list of strings")
            return ()
        return tuple(value)

    def string_map(self, value: Any, path: PathKey) -> dict[str, str]:
        raw = self.typed(value, path, dict, {})
        out: dict[str, str] = {}
        for key, item in raw.items():
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                self.fail((*path, key), f"{_name((*path, key))} must be a string")
                continue
            out[key] = self.expand(str(item), (*path, key))
        return out

    def expand(self, text: str, path: PathKey) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.environ:
                self.fail(path, f"environment variable {name} is not set (used in {_name(path)})")
                return ""
            return self.environ[name]

        return _VAR.sub(sub, text)

    def resolve(self, text: str) -> Path:
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.base / path


def _name(path: PathKey) -> str:
    return ".".join(str(p) for p in path) if path else "the file"


def _kind(value: Any) -> str:
    return (
        "a list"
        if isinstance(value, list)
        else "a mapping"
        if isinstance(value, dict)
        else (repr(value) if value is None or isinstance(value, bool) else type(value).__name__)
    )


_TOP = {
    "rules", "engine", "agent", "agents", "audit", "limits", "mode", "hide_denied", "ask",
    "pins", "pins_trust_on_first_use", "sanitize_descriptions", "record", "upstreams", "server",
}  # fmt: skip


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(Position(str(source), 1, 1), f"cannot read: {reason}")]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(Position(str(source), 1, 1), "not UTF-8 text")]) from None
    try:
        doc = load_located(text, source)
    except YamlSyntaxError as exc:
        raise ConfigError(
            [ConfigIssue(exc.position, f"YAML syntax error: {exc.problem}")]
        ) from None
    env = os.environ if environ is None else environ
    r = _Reader(doc, source.resolve().parent, env)
    top = r.mapping(doc.data, (), _TOP)
    config = _build(r, top, source)
    if r.issues:
        raise ConfigError(r.issues)
    return config


def _build(r: _Reader, top: dict[str, Any], source: Path) -> Config:
    rules = tuple(r.resolve(p) for p in r.strings(top.get("rules"), ("rules",)))
    for i, rule_path in enumerate(rules):
        if not rule_path.exists():
            where: PathKey = ("rules", i) if isinstance(top.get("rules"), list) else ("rules",)
            r.fail(where, f"rules path {str(rule_path)!r} does not exist")
    ask = r.mapping(top.get("ask"), ("ask",), {"timeout_s"})
    return Config(
        source=source,
        rules=rules,
        engine=r.choice(top.get("engine"), ("engine",), ("auto", "cel-expr", "cel-python"), "auto"),
        agent=r.typed(top.get("agent"), ("agent",), str, None),
        agents=_agents(r, top.get("agents")),
        audit=_audit(r, top.get("audit")),
        limits=_limits(r, top.get("limits")),
        mode=r.choice(top.get("mode"), ("mode",), ("enforce", "monitor"), "enforce"),
        hide_denied=r.typed(top.get("hide_denied"), ("hide_denied",), bool, False),
        ask_timeout_s=r.positive(ask.get("timeout_s"), ("ask", "timeout_s"), float, 120.0),
        pins=r.choice(top.get("pins"), ("pins",), ("off", "warn", "block"), "warn"),
        pins_trust_on_first_use=r.typed(
            top.get("pins_trust_on_first_use"), ("pins_trust_on_first_use",), bool, True
        ),
        sanitize_descriptions=r.typed(
            top.get("sanitize_descriptions"), ("sanitize_descriptions",), bool, True
        ),
        record=r.typed(top.get("record"), ("record",), bool, False),
        upstreams=_upstreams(r, top.get("upstreams")),
        server=_server(r, top.get("server")),
    )


def _each(r: _Reader, value: Any, path: PathKey) -> list[tuple[str, Any, PathKey]]:
    items = r.typed(value, path, dict, {})
    return [(str(k), v, (*path, k)) for k, v in items.items()]


def _agents(r: _Reader, value: Any) -> dict[str, AgentConfig]:
    out: dict[str, AgentConfig] = {}
    for agent_id, raw, path in _each(r, value, ("agents",)):
        body = r.mapping(raw, path, {"roles", "claims", "record"})
        record = body.get("record")
        out[agent_id] = AgentConfig(
            id=agent_id,
            roles=r.strings(body.get("roles"), (*path, "roles")),
            claims=r.typed(body.get("claims"), (*path, "claims"), dict, {}),
            record=None if record is None else r.typed(record, (*path, "record"), bool, False),
        )
    return out


def _audit(r: _Reader, value: Any) -> AuditSettings:
    p: PathKey = ("audit",)
    if isinstance(value, str):  # `audit: ./audit.db` is a shorthand for the url
        value = {"url": value}
    body = r.mapping(value, p, {"url", "on_failure", "redact", "detect_secrets", "timeout_s"})
    url = r.optional(body.get("url"), (*p, "url"), str)
    if url is not None and "://" not in url:
        url = str(r.resolve(url))
    redact = r.strings(body.get("redact"), (*p, "redact"))
    for i, pointer in enumerate(redact):
        if pointer and not pointer.startswith("/"):
            r.fail((*p, "redact", i), f"redact pointer {pointer!r} must start with '/' (RFC 6901)")
    return AuditSettings(
        url=url,
        on_failure=r.choice(body.get("on_failure"), (*p, "on_failure"), ("deny", "allow"), "deny"),
        redact=redact,
        detect_secrets=r.typed(body.get("detect_secrets"), (*p, "detect_secrets"), bool, True),
        timeout_s=r.positive(body.get("timeout_s"), (*p, "timeout_s"), float, 30.0),
    )


def _limits(r: _Reader, value: Any) -> LimitsConfig:
    p: PathKey = ("limits",)
    body = r.mapping(value, p, {"max_depth", "max_bytes", "max_items"})
    d = LimitsConfig()
    return LimitsConfig(
        max_depth=r.positive(body.get("max_depth"), (*p, "max_depth"), int, d.max_depth),
        max_bytes=r.positive(body.get("max_bytes"), (*p, "max_bytes"), int, d.max_bytes),
        max_items=r.positive(body.get("max_items"), (*p, "max_items"), int, d.max_items),
    )


_UPSTREAM = {"command", "args", "env", "cwd", "url", "headers", "timeout_s", "sessions"}
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _upstreams(r: _Reader, value: Any) -> dict[str, UpstreamConfig]:
    out: dict[str, UpstreamConfig] = {}
    for name, raw, path in _each(r, value, ("upstreams",)):
        if not _SERVER_NAME.match(name) or "__" in name:
            r.fail(path, f"upstream name {name!r}: use letters, digits, '.', '-', single '_'",
                   key=True)  # fmt: skip
        body = r.mapping(raw, path, _UPSTREAM)
        command = r.optional(body.get("command"), (*path, "command"), str)
        url = r.optional(body.get("url"), (*path, "url"), str)
        if (command is None) == (url is None):
            r.fail(
                path, f"upstream {name!r} needs exactly one of 'command' (stdio) or 'url' (HTTP)"
            )
        if url is not None:
            url = r.expand(url, (*path, "url"))
            if not url.startswith(("http://", "https://")):
                r.fail(
                    (*path, "url"), f"upstream url must start with http:// or https://, got {url!r}"
                )
        cwd = r.optional(body.get("cwd"), (*path, "cwd"), str)
        sessions = r.positive(body.get("sessions"), (*path, "sessions"), int, 4 if url else 1)
        if sessions > MAX_UPSTREAM_SESSIONS:
            r.fail((*path, "sessions"), f"sessions must be at most {MAX_UPSTREAM_SESSIONS}")
        out[name] = UpstreamConfig(
            name=name,
            command=command,
            args=tuple(
                r.expand(a, (*path, "args")) for a in r.strings(body.get("args"), (*path, "args"))
            ),
            env=r.string_map(body.get("env"), (*path, "env")),
            cwd=None if cwd is None else str(r.resolve(cwd)),
            url=url,
            headers=r.string_map(body.get("headers"), (*path, "headers")),
            timeout_s=r.positive(body.get("timeout_s"), (*path, "timeout_s"), float, 300.0),
            sessions=sessions,
        )
    return out


_MB, _MD, _RT = "max_body_bytes", "max_json_depth", "read_timeout_s"


def _server(r: _Reader, value: Any) -> ServerConfig:
    p: PathKey = ("server",)
    allowed = {"host", "port", "public_url", "allowed_origins", "max_body_bytes",
               "max_json_depth", "read_timeout_s", "auth"}  # fmt: skip
    body = r.mapping(value, p, allowed)
    d = ServerConfig()
    port = r.typed(body.get("port"), (*p, "port"), int, d.port)
    if not 0 <= port <= 65535:
        r.fail((*p, "port"), f"server.port must be 0..65535, got {port}")
    return ServerConfig(
        host=r.typed(body.get("host"), (*p, "host"), str, d.host),
        port=port,
        public_url=r.typed(body.get("public_url"), (*p, "public_url"), str, None),
        allowed_origins=r.strings(body.get("allowed_origins"), (*p, "allowed_origins")),
        max_body_bytes=r.positive(body.get(_MB), (*p, _MB), int, d.max_body_bytes),
        max_json_depth=r.positive(body.get(_MD), (*p, _MD), int, d.max_json_depth),
        read_timeout_s=r.positive(body.get(_RT), (*p, _RT), float, d.read_timeout_s),
        auth=_auth(r, body.get("auth"), (*p, "auth")),
    )  # fmt: skip


def _auth(r: _Reader, value: Any, p: PathKey) -> AuthConfig:
    body = r.mapping(value, p, {"jwt", "api_keys"})
    keys: list[ApiKeyConfig] = []
    raw_keys = r.typed(body.get("api_keys"), (*p, "api_keys"), list, [])
    for i, raw in enumerate(raw_keys):
        kp: PathKey = (*p, "api_keys", i)
        item = r.mapping(raw, kp, {"sha256", "agent", "roles"})
        digest = r.typed(item.get("sha256"), (*kp, "sha256"), str, "")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            r.fail((*kp, "sha256"), "api key sha256 must be 64 lowercase hex characters "
                   "(store the hash, never the key: `printf %s KEY | sha256sum`)")  # fmt: skip
        agent = r.typed(item.get("agent"), (*kp, "agent"), str, "")
        if not agent:
            r.fail(kp, "api key needs an 'agent' id")
        keys.append(
            ApiKeyConfig(
                sha256=digest, agent=agent, roles=r.strings(item.get("roles"), (*kp, "roles"))
            )
        )
    return AuthConfig(jwt=_jwt(r, body.get("jwt"), (*p, "jwt")), api_keys=tuple(keys))


def _jwt(r: _Reader, value: Any, p: PathKey) -> JwtConfig | None:
    if value is None:
        return None
    fields = {"jwks_url", "public_key", "public_key_file", "secret", "secret_env", "issuer",
              "audience", "algorithms", "agent_claim", "roles_claim"}  # fmt: skip
    body = r.mapping(value, p, fields)

    def get(key: str) -> str | None:
        return r.optional(body.get(key), (*p, key), str)

    public_key, secret = get("public_key"), get("secret")
    key_file, secret_env = get("public_key_file"), get("secret_env")
    if key_file is not None:
        try:
            public_key = r.resolve(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            r.fail((*p, "public_key_file"), f"cannot read public key file: {exc.strerror or exc}")
    if secret_env is not None:
        secret = r.environ.get(secret_env)
        if secret is None:
            r.fail((*p, "secret_env"), f"environment variable {secret_env} is not set")
    sources = [s for s in (get("jwks_url"), public_key, secret) if s is not None]
    if len(sources) != 1:
        r.fail(p, "server.auth.jwt needs exactly one key source: jwks_url, public_key(_file) or "
               "secret(_env)")  # fmt: skip
    audience = get("audience")
    if audience is None:
        r.fail(
            p, "server.auth.jwt needs 'audience': tokens not minted for this firewall are refused"
        )
    algorithms = r.strings(body.get("algorithms"), (*p, "algorithms"))
    if any(a.lower() == "none" for a in algorithms):
        r.fail((*p, "algorithms"), "algorithm 'none' is never accepted")
    if not algorithms:
        algorithms = ("HS256",) if secret is not None else ("RS256", "ES256", "EdDSA")
    return JwtConfig(
        jwks_url=get("jwks_url"),
        public_key=public_key,
        secret=secret,
        issuer=get("issuer"),
        audience=audience,
        algorithms=algorithms,
        agent_claim=get("agent_claim") or "sub",
        roles_claim=get("roles_claim") or "roles",
    )
