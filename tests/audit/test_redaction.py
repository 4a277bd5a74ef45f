"""Redaction: configured pointers and built-in detectors mask secrets before storage."""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcpfw.audit import AuditError, RedactionConfig, Redactor, open_store
from mcpfw.audit.events import digest
from mcpfw.audit.redaction import is_secret_key, redact_text
from mcpfw.model import Agent, Outcome
from tests.audit.conftest import make_call, make_decision

ALNUM = string.ascii_letters + string.digits


def _rand(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def secret_corpus(rng: random.Random) -> list[tuple[str, str, Any]]:
    """(kind, the secret text that must never be stored, the value to put in arguments)."""
    out: list[tuple[str, str, Any]] = []
    aws = "AKIA" + _rand(rng, 16, string.ascii_uppercase + string.digits)
    out.append(("aws-access-key", aws, f"aws s3 ls --key {aws}"))
    aws_secret = _rand(rng, 40, ALNUM + "/+")
    out.append(("aws-secret-key", aws_secret, f"export AWS_SECRET_ACCESS_KEY={aws_secret}"))
    gh = "ghp_" + _rand(rng, 36)
    out.append(("github", gh, gh))
    pat = "github_pat_" + _rand(rng, 30, ALNUM + "_")
    out.append(("github-pat", pat, f"git clone https://x/{pat}/repo"))
    gl = "glpat-" + _rand(rng, 20, ALNUM + "-_")
    out.append(("gitlab", gl, {"note": f"token is {gl}"}))
    slack = "xoxb-" + _rand(rng, 12, string.digits) + "-" + _rand(rng, 24)
    out.append(("slack", slack, [slack]))
    hook = (
        "https://hooks.slack.com/services/T"
        + _rand(rng, 8)
        + "/B"
        + _rand(rng, 8)
        + "/"
        + _rand(rng, 24)
    )
    out.append(("slack-webhook", hook, {"url": hook}))
    jwt = ".".join(
        (
            _b64url(b'{"alg":"HS256","typ":"JWT"}'),
            _b64url(json.dumps({"sub": _rand(rng, 10)}).encode()),
            _b64url(rng.randbytes(32)),
        )
    )
    out.append(("jwt", jwt, f"curl -H 'X-Token-Header: {jwt}' https://api"))
    body = "\n".join(_rand(rng, 64, ALNUM + "+/") for _ in range(4))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"
    out.append(("pem", body.splitlines()[1], {"content": pem}))
    bearer = _rand(rng, 32, ALNUM + "-._")
    out.append(("bearer", bearer, f"GET / HTTP/1.1\nX-Forward: Bearer {bearer}"))
    basic = base64.b64encode(f"admin:{_rand(rng, 12)}".encode()).decode()
    out.append(("basic", basic, {"header": f"Basic {basic}"}))
    url_pw = _rand(rng, 14)
    out.append(("url-credentials", url_pw, f"postgres://admin:{url_pw}@db:5432/prod"))
    assign_pw = _rand(rng, 14)
    out.append(("assignment", assign_pw, f"mysql --host db password={assign_pw} -e 'select 1'"))
    for key in ("password", "db_password", "clientSecret", "apiKey", "X-Api-Key", "refresh_token"):
        value = _rand(rng, 18)
        out.append((f"key:{key}", value, {key: value}))
    authz = _rand(rng, 20)
    out.append(("authorization-header", authz, {"headers": {"Authorization": authz}}))
    return out


@pytest.mark.anyio
async def test_no_secret_of_a_seeded_corpus_reaches_the_database(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    path = tmp_path / "audit.db"
    secrets: list[str] = []
    canary = "canary-" + _rand(rng, 16)  # not a secret: proves the raw scan sees stored text
    with anyio.fail_after(60):
        async with open_store(str(path), instance="fw") as store:
            for round_ in range(12):
                corpus = secret_corpus(rng)
                secrets.extend(secret for _, secret, _ in corpus)
                rng.shuffle(corpus)
                arguments: dict[str, Any] = {"note": canary, "n": round_}
                for i, (_, _, value) in enumerate(corpus):
                    where = rng.choice(["top", "nested", "list"])
                    if where == "top":
                        arguments[f"a{i}"] = value
                    elif where == "nested":
                        arguments.setdefault("deep", {}).setdefault("er", {})[f"a{i}"] = value
                    else:
                        arguments.setdefault("items", []).append(value)
                claim_secret = "ghp_" + _rand(rng, 36)
                secrets.append(claim_secret)
                agent = Agent(id="ci", roles=("dev",), claims={"note": claim_secret})
                decision = make_decision(reason=f"saw Bearer {claim_secret}")
                await store.record_session_start(
                    session_id=f"s{round_}",
                    agent=agent,
                    server="fs",
                    detail={"env": {"GITHUB_TOKEN": claim_secret}},
                )
                await store.record_decision(
                    make_call(arguments=arguments, agent=agent, session_id=f"s{round_}"), decision
                )
                await store.record_outcome(
                    decision.id, Outcome.UPSTREAM_ERROR, detail=f"auth failed for {claim_secret}"
                )
                await store.record_session_end(f"s{round_}", reason=f"token={claim_secret}")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit.db"))
    assert canary.encode() in raw
    leaked = [s for s in secrets if s.encode() in raw]
    assert leaked == []
    assert len(secrets) == 12 * (len(secret_corpus(random.Random(0))) + 1)


@pytest.mark.anyio
async def test_the_arguments_digest_never_lets_a_reader_confirm_a_guessed_secret() -> None:
    async with open_store(":memory:", instance="fw") as store:
        for pin in ("1234", "9876"):
            await store.record_decision(
                make_call(arguments={"path": "/w/a", "password": pin}), make_decision()
            )
        await store.record_decision(make_call(arguments={"path": "/w/a"}), make_decision())
        events = sorted(await store.list_events(), key=lambda e: e.seq)
    first, second, plain = (e.data for e in events)
    assert first["args_digest_of"] == second["args_digest_of"] == "redacted"
    assert first["args_digest"] == second["args_digest"]  # the secret does not show through
    assert first["args_digest"] == digest(first["arguments"])
    for guess in ("1234", "9876"):
        assert digest({"path": "/w/a", "password": guess}) != first["args_digest"]
    assert plain["args_digest_of"] == "original"
    assert plain["args_digest"] == digest({"path": "/w/a"})  # provable when nothing was masked


def test_each_detector_masks_its_secret_and_reports_its_kind() -> None:
    rng = random.Random(7)
    redactor = Redactor()
    for kind, secret, value in secret_corpus(rng):
        result = redactor.redact({"v": value})
        assert secret not in json.dumps(result.value), kind
        assert result.masked, kind
        assert all(path.startswith("/v") for path in result.paths), kind


def test_ordinary_arguments_are_left_alone() -> None:
    args = {
        "path": "/workspace/src/tokenizer.py",
        "max_tokens": 512,
        "author": "ada",
        "query": "how do I reset my password?",
        "url": "https://example.com/a?b=c",
        "flag": True,
        "nothing": None,
    }
    result = Redactor().redact(args)
    assert result.value == args
    assert result.masked == ()


def test_masked_text_keeps_its_context() -> None:
    text, kinds = redact_text("curl -H 'Authorization: Bearer abcdefghijklmnop' https://x")
    assert text == "curl -H 'Authorization: Bearer [REDACTED:bearer]' https://x"
    assert kinds == ("bearer",)


def test_pointers_support_escapes_and_wildcards() -> None:
    redactor = Redactor(RedactionConfig(pointers=("/a~1b/c~0d", "/list/*", "/x/*/y")))
    result = redactor.redact(
        {"a/b": {"c~d": 1, "e": 2}, "list": [1, 2], "x": {"p": {"y": 3}, "q": {"z": 4}}}
    )
    assert result.value == {
        "a/b": {"c~d": "[REDACTED:pointer]", "e": 2},
        "list": ["[REDACTED:pointer]", "[REDACTED:pointer]"],
        "x": {"p": {"y": "[REDACTED:pointer]"}, "q": {"z": 4}},
    }
    assert result.paths == ("/a~1b/c~0d", "/list/0", "/list/1", "/x/p/y")


def test_a_pointer_that_is_not_a_json_pointer_is_a_clear_error() -> None:
    with pytest.raises(AuditError, match="must start with '/'"):
        RedactionConfig(pointers=("password",))


def test_detectors_can_be_turned_off_but_pointers_still_apply() -> None:
    redactor = Redactor(RedactionConfig(pointers=("/a",), detect_secrets=False))
    result = redactor.redact({"a": "x", "password": "hunter2"})
    assert result.value == {"a": "[REDACTED:pointer]", "password": "hunter2"}


def test_values_nested_too_deep_are_not_stored() -> None:
    value: Any = "leaf"
    for _ in range(200):
        value = {"k": value}
    result = Redactor().redact(value)
    assert ("too-deep") in {kind for _, kind in result.masked}
    assert "leaf" not in json.dumps(result.value)


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("x-api-key", True),
        ("client_secret", True),
        ("refreshToken", True),
        ("Authorization", True),
        ("max_tokens", False),
        ("author", False),
        ("path", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret
