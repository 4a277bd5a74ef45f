"""Bearer authentication of `mcpfw serve`: JWTs (secret, PEM, JWKS), API keys, 401s."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mcpfw.config import AgentConfig, ApiKeyConfig, AuthConfig, JwtConfig
from mcpfw.proxy.auth import AuthConfigError, Authenticator, AuthError

from .http_harness import AUDIENCE, ISSUER, SECRET, serving, token, write_config

pytestmark = pytest.mark.anyio

WAIT = 20


def _hs256(**overrides: object) -> Authenticator:
    conf = JwtConfig(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",))
    agents = {"ci-bot": AgentConfig(id="ci-bot", roles=("ci",), claims={"team": "platform"})}
    return Authenticator(auth=AuthConfig(jwt=conf), agents=agents, **overrides)  # type: ignore[arg-type]


def _rsa() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


async def test_a_valid_token_becomes_an_agent_with_its_claims_and_configured_roles() -> None:
    auth = _hs256()
    agent = await auth.authenticate("Bearer " + token("ci-bot", ("deploy",), tenant="acme"))
    assert agent.id == "ci-bot"
    assert agent.roles == ("deploy", "ci")
    assert agent.claims["tenant"] == "acme" and agent.claims["team"] == "platform"
    assert agent.transport == "http"


def _bad_tokens() -> dict[str, str]:
    other_key = "another-secret-another-secret-0000"
    return {
        "expired": token("ci-bot", exp_in=-3600),
        "not yet valid": token("ci-bot", nbf=int(time.time()) + 3600),
        "wrong audience": token("ci-bot", aud="someone-else"),
        "wrong issuer": token("ci-bot", iss="https://evil.test"),
        "badly signed": token("ci-bot", key=other_key),
        "unsigned (alg none)": jwt.encode(
            {"sub": "ci-bot", "aud": AUDIENCE, "iss": ISSUER, "exp": time.time() + 60},
            None,
            algorithm="none",
        ),
        "no exp": jwt.encode({"sub": "ci-bot", "aud": AUDIENCE, "iss": ISSUER}, SECRET),
        "no subject": token("", roles=()),
        "garbage": "not.a.jwt",
        "unknown api key": "some-random-key",
    }


@pytest.mark.parametrize("kind", list(_bad_tokens()))
async def test_a_bad_token_is_refused(kind: str) -> None:
    with pytest.raises(AuthError) as refused:
        await _hs256().authenticate("Bearer " + _bad_tokens()[kind])
    assert refused.value.error == "invalid_token"


async def test_a_missing_or_non_bearer_header_is_refused() -> None:
    auth = _hs256()
    with pytest.raises(AuthError) as missing:
        await auth.authenticate(None)
    with pytest.raises(AuthError) as basic:
        await auth.authenticate("Basic dXNlcjpwYXNz")
    assert missing.value.error == ""  # RFC 6750: no error code when no credential was sent
    assert basic.value.error == "invalid_request"


async def test_api_keys_are_matched_by_their_sha256() -> None:
    digest = hashlib.sha256(b"k-123").hexdigest()
    auth = Authenticator(
        auth=AuthConfig(api_keys=(ApiKeyConfig(sha256=digest, agent="robot", roles=("ci",)),))
    )
    agent = await auth.authenticate("Bearer k-123")
    assert (agent.id, agent.roles) == ("robot", ("ci",))
    with pytest.raises(AuthError):
        await auth.authenticate("Bearer " + digest)  # the hash itself is not the key


async def test_a_pem_public_key_verifies_rs256_and_refuses_hmac_made_with_the_public_key() -> None:
    private, pem = _rsa()
    conf = JwtConfig(public_key=pem, issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256",))
    auth = Authenticator(auth=AuthConfig(jwt=conf))
    good = token("svc", key=private, alg="RS256")
    assert (await auth.authenticate(f"Bearer {good}")).id == "svc"
    # Alg confusion: an HS256 token whose "secret" is the public key text.
    claims = {"sub": "svc", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    forged = _hmac_token(claims, pem.encode())
    with pytest.raises(AuthError) as refused:
        await auth.authenticate(f"Bearer {forged}")
    assert "not accepted" in refused.value.description


def _hmac_token(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 JWT built by hand (pyjwt refuses to use a PEM key as an HMAC secret)."""
    import base64
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_algorithms_that_do_not_fit_the_key_are_a_config_error() -> None:
    _, pem = _rsa()
    with pytest.raises(AuthConfigError):
        Authenticator(
            auth=AuthConfig(
                jwt=JwtConfig(public_key=pem, audience=AUDIENCE, algorithms=("RS256", "HS256"))
            )
        )
    with pytest.raises(AuthConfigError):
        Authenticator(
            auth=AuthConfig(jwt=JwtConfig(secret=SECRET, audience=AUDIENCE, algorithms=("RS256",)))
        )


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, rsa.RSAPrivateKey]]:
    """A JWKS document on a loopback HTTP server (PyJWKClient fetches with urllib)."""
    private, _ = _rsa()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", private
    finally:
        server.shutdown()
        server.server_close()


async def test_a_jwks_url_verifies_tokens_by_key_id(
    jwks_server: tuple[str, rsa.RSAPrivateKey],
) -> None:
    url, private = jwks_server
    conf = JwtConfig(jwks_url=url, issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256",))
    auth = Authenticator(auth=AuthConfig(jwt=conf))
    good = jwt.encode(
        {"sub": "svc", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60},
        private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    other, _ = _rsa()
    forged = jwt.encode(
        {"sub": "svc", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60},
        other,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    with anyio.fail_after(WAIT):
        assert (await auth.authenticate(f"Bearer {good}")).id == "svc"
        with pytest.raises(AuthError) as refused:
            await auth.authenticate(f"Bearer {forged}")
    assert "signature" in refused.value.description


async def test_over_http_bad_tokens_get_401_pointing_at_the_protected_resource_metadata(
    tmp_path: Path,
) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            answers = {
                kind: await http.post(
                    served.mcp("fs"), json=ping, headers={"authorization": f"Bearer {bad}"}
                )
                for kind, bad in _bad_tokens().items()
            }
            anonymous = await http.post(served.mcp("fs"), json=ping)
            metadata_url = anonymous.headers["www-authenticate"].split('resource_metadata="')[1]
            metadata = (await http.get(metadata_url.split('"')[0])).json()
    for kind, answer in answers.items():
        assert answer.status_code == 401, kind
        assert answer.headers["www-authenticate"].startswith("Bearer resource_metadata=")
        assert 'error="invalid_token"' in answer.headers["www-authenticate"], kind
    assert anonymous.status_code == 401
    assert "/.well-known/oauth-protected-resource/mcp/fs" in metadata_url
    assert metadata["resource"] == served.mcp("fs")
    assert metadata["authorization_servers"] == [ISSUER]
    assert metadata["bearer_methods_supported"] == ["header"]
