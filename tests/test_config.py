"""mcpfw.yaml loading: a valid file becomes a Config; every problem is reported with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpfw.config import ConfigError, load_config

FULL = """\
rules: rules/
agent: claude-desktop
agents:
  claude-desktop:
    roles: [developer]
    claims: {team: platform}
    record: true
  ci-bot: {roles: [ci]}
audit: {url: audit.db, on_failure: deny, redact: [/password], timeout_s: 2}
limits: {max_depth: 8}
mode: monitor
hide_denied: true
ask: {timeout_s: 5}
pins: block
upstreams:
  fs: {command: npx, args: [server-filesystem, "${WORK}"], env: {TOKEN: "${TOKEN}"}}
  api: {url: "https://mcp.example.com/mcp", headers: {Authorization: "Bearer ${TOKEN}"}}
server:
  port: 9000
  auth:
    jwt: {secret_env: JWT_SECRET, issuer: me, audience: mcpfw}
    api_keys: [{sha256: "%s", agent: ci-bot, roles: [ci]}]
""" % ("a" * 64)

ENV = {"WORK": "/work", "TOKEN": "t0k", "JWT_SECRET": "s3cret"}


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    path = tmp_path / "mcpfw.yaml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ=ENV if environ is None else environ)
    return [str(i) for i in info.value.issues]


def test_a_full_config_loads_with_paths_resolved_and_variables_expanded(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ=ENV)
    assert config.rules == (tmp_path / "rules",)
    assert config.audit.url == str(tmp_path / "audit.db") and config.audit.timeout_s == 2.0
    assert config.agent_config("claude-desktop").roles == ("developer",)
    assert config.agent_config("claude-desktop").claims == {"team": "platform"}
    assert config.agent_config("unknown").roles == ()
    assert config.records("claude-desktop") and not config.records("ci-bot")
    assert config.limits.max_depth == 8 and config.limits.max_bytes == 262_144
    assert config.mode == "monitor" and config.hide_denied and config.pins == "block"
    assert config.ask_timeout_s == 5.0
    assert config.upstreams["fs"].args == ("server-filesystem", "/work")
    assert config.upstreams["fs"].env == {"TOKEN": "t0k"}
    assert config.upstreams["api"].headers == {"Authorization": "Bearer t0k"}
    jwt = config.server.auth.jwt
    assert jwt is not None and jwt.secret == "s3cret" and jwt.algorithms == ("HS256",)
    assert config.server.auth.api_keys[0].agent == "ci-bot"


def test_an_empty_file_is_all_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.mode == "enforce" and config.audit.on_failure == "deny" and config.rules == ()


def test_a_misspelt_key_is_reported_at_its_line_with_a_suggestion(tmp_path: Path) -> None:
    assert errors(tmp_path, "mode: enforce\nhide_deneid: true\n") == [
        f"{tmp_path / 'mcpfw.yaml'}:2:1: unknown field 'hide_deneid' in the file "
        '(did you mean "hide_denied"?)'
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = errors(tmp_path, "mode: block\npins: maybe\nlimits: {max_depth: -1}\nrules: nope/\n")
    assert len(found) == 4
    assert any(":1:7: mode must be one of enforce, monitor" in e for e in found)
    assert any(":2:7: pins must be one of off, warn, block" in e for e in found)
    assert any(":3:21: limits.max_depth must be greater than 0" in e for e in found)
    assert any(":4:8: rules path" in e and "does not exist" in e for e in found)


def test_a_missing_environment_variable_is_an_error_not_an_empty_string(tmp_path: Path) -> None:
    found = errors(tmp_path, 'upstreams:\n  fs: {command: x, env: {K: "${NOPE}"}}\n', environ={})
    assert len(found) == 1 and "environment variable NOPE is not set" in found[0]


def test_an_upstream_needs_exactly_one_of_command_or_url(tmp_path: Path) -> None:
    found = errors(tmp_path, "upstreams:\n  a: {args: [x]}\n  b: {command: x, url: 'http://h'}\n")
    assert len(found) == 2 and all("exactly one of 'command'" in e for e in found)


def test_trust_on_first_use_is_on_unless_turned_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "pins: block\n")).pins_trust_on_first_use is True
    config = load_config(write(tmp_path, "pins_trust_on_first_use: false\n"))
    assert config.pins_trust_on_first_use is False
    (found,) = errors(tmp_path, "pins_trust_on_first_use: sometimes\n")
    assert ":1:" in found and "must be bool" in found


def test_upstream_sessions_default_by_transport_and_are_bounded(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "upstreams:\n  a: {command: x}\n  b: {url: 'http://h'}\n"
            "  c: {url: 'http://h', sessions: 8}\n",
        )
    )
    assert [config.upstreams[n].sessions for n in "abc"] == [1, 4, 8]
    found = errors(
        tmp_path,
        "upstreams:\n  a: {url: 'http://h', sessions: 0}\n  b: {url: 'http://h', sessions: 65}\n"
        "  c: {url: 'http://h', sessions: many}\n",
    )
    assert len(found) == 3
    assert ":2:" in found[0] and "greater than 0" in found[0]
    assert ":3:" in found[1] and "at most 64" in found[1]
    assert ":4:" in found[2] and "must be int" in found[2]


def test_a_jwt_section_without_audience_or_with_alg_none_is_refused(tmp_path: Path) -> None:
    found = errors(tmp_path, "server:\n  auth:\n    jwt: {secret: x, algorithms: [none]}\n")
    assert any("needs 'audience'" in e for e in found)
    assert any("algorithm 'none' is never accepted" in e for e in found)


def test_an_api_key_must_be_stored_hashed(tmp_path: Path) -> None:
    found = errors(tmp_path, "server:\n  auth:\n    api_keys: [{sha256: plaintext, agent: a}]\n")
    assert len(found) == 1 and ":3:25: api key sha256 must be 64 lowercase hex" in found[0]


def test_yaml_syntax_errors_name_the_place(tmp_path: Path) -> None:
    found = errors(tmp_path, "mode: enforce\nagents: {a: [}\n")
    assert len(found) == 1 and ":2:" in found[0] and "YAML syntax error" in found[0]


def test_duplicate_keys_are_errors_not_silently_overwritten(tmp_path: Path) -> None:
    found = errors(tmp_path, "mode: monitor\nmode: enforce\n")
    assert len(found) == 1 and ":2:1:" in found[0] and "duplicate key 'mode'" in found[0]


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
