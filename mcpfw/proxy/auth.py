"""Who is calling over HTTP: an `Agent` from the request's `Authorization: Bearer` token.

Two kinds of credential are accepted, both from `server.auth` in `mcpfw.yaml`:

- API keys: the config stores only the sha256 of each key, mapped to an agent id and roles.
- JWTs: verified with pyjwt against a JWKS URL (keys cached), a PEM public key, or an HS256
  secret. Signature, `exp` (required), `nbf`, issuer and audience are all checked; the
  accepted algorithms are pinned by the config (`none` never; a symmetric algorithm is never
  accepted with a public key, so a token cannot be "signed" with the public key as an HMAC
  secret). The token's claims become `Agent.claims`.

Every failure is an `AuthError` that the HTTP front answers with 401 and a
`WWW-Authenticate` header pointing at the RFC 9728 protected-resource metadata.
Verified tokens are cached (by digest, until they expire) so a busy agent costs one
signature check, not one per request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import jwt

from mcpfw.config import AgentConfig, AuthConfig, JwtConfig
from mcpfw.model import Agent

__all__ = [
    "AuthError",
    "Authenticator",
    "protected_resource_metadata",
    "www_authenticate",
]

_SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_LEEWAY_S = 30.0  # clock skew tolerated on exp/nbf
_CACHE_SIZE = 10_000


class AuthError(Exception):
    """The request carries no usable credential; `error` is the RFC 6750 error code."""

    def __init__(self, description: str, *, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.error = error  # "" when no credential was presented at all


class AuthConfigError(ValueError):
    """The auth section cannot work (e.g. an algorithm that does not fit the key)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class _ApiKey:
    agent: str
    roles: tuple[str, ...]


@dataclass(kw_only=True, slots=True)
class _Cached:
    agent: Agent
    expires: float  # monotonic-free wall clock (JWT exp), inf for API keys


@dataclass(kw_only=True)
class Authenticator:
    """Turns a bearer token into an `Agent`, or raises `AuthError`."""

    auth: AuthConfig
    agents: Mapping[str, AgentConfig] = field(default_factory=dict)
    leeway_s: float = _LEEWAY_S

    def __post_init__(self) -> None:
        self._keys = {k.sha256: _ApiKey(agent=k.agent, roles=k.roles) for k in self.auth.api_keys}
        self._jwt = self.auth.jwt
        self._algorithms = _check_algorithms(self._jwt) if self._jwt is not None else ()
        self._jwks: jwt.PyJWKClient | None = None
        self._static_key: Any = None
        if self._jwt is not None:
            if self._jwt.jwks_url:
                self._jwks = jwt.PyJWKClient(
                    self._jwt.jwks_url, cache_keys=True, lifespan=300, timeout=10
                )
            elif self._jwt.public_key:
                self._static_key = self._jwt.public_key
            else:
                self._static_key = self._jwt.secret
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether any credential kind is configured (serving without one is refused)."""
        return bool(self._keys) or self._jwt is not None

    async def authenticate(self, authorization: str | None) -> Agent:
        """The agent for an `Authorization` header value; raises AuthError."""
        token = _bearer(authorization)
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        cached = self._cache.get(digest)
        now = time.time()
        if cached is not None:
            if cached.expires + self.leeway_s > now:
                self._cache.move_to_end(digest)
                return cached.agent
            del self._cache[digest]
        key = self._api_key(digest)
        if key is not None:
            agent = self._agent(key.agent, key.roles, {})
            self._remember(digest, _Cached(agent=agent, expires=float("inf")))
            return agent
        if self._jwt is None or token.count(".") != 2:
            raise AuthError("unknown API key or malformed token")
        claims = await self._verify_jwt(token, self._jwt)
        agent = self._agent_from_claims(claims, self._jwt)
        self._remember(digest, _Cached(agent=agent, expires=float(claims["exp"])))
        return agent

    def _api_key(self, digest: str) -> _ApiKey | None:
        for known, key in self._keys.items():
            if hmac.compare_digest(known, digest):
                return key
        return None

    async def _verify_jwt(self, token: str, conf: JwtConfig) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            allowed = ", ".join(self._algorithms)
            raise AuthError(f"token algorithm {alg!r} is not accepted (accepted: {allowed})")
        key: Any = self._static_key
        if self._jwks is not None:
            jwks = self._jwks
            try:
                # PyJWKClient fetches over blocking urllib; keep it off the event loop.
                key = await anyio.to_thread.run_sync(jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientError as exc:
                raise AuthError(f"no signing key for this token: {exc}") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=conf.audience,
                issuer=conf.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "aud"] + (["iss"] if conf.issuer else [])},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token was not issued for this firewall (audience)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the required claim {exc.claim!r}") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return claims

    def _agent_from_claims(self, claims: Mapping[str, Any], conf: JwtConfig) -> Agent:
        agent_id = claims.get(conf.agent_claim)
        if not isinstance(agent_id, str) or not agent_id:
            raise AuthError(f"token has no {conf.agent_claim!r} claim naming the agent")
        raw_roles = claims.get(conf.roles_claim, ())
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        roles = tuple(r for r in raw_roles if isinstance(r, str)) if _is_seq(raw_roles) else ()
        return self._agent(agent_id, roles, claims)

    def _agent(self, agent_id: str, roles: Sequence[str], claims: Mapping[str, Any]) -> Agent:
        # The config may grant an agent more roles and claims; the token's own claims win.
        conf = self.agents.get(agent_id)
        merged_roles = tuple(dict.fromkeys([*roles, *(conf.roles if conf else ())]))
        merged_claims = {**(conf.claims if conf else {}), **claims}
        return Agent(id=agent_id, roles=merged_roles, claims=merged_claims, transport="http")

    def _remember(self, digest: str, entry: _Cached) -> None:
        self._cache[digest] = entry
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)


def _is_seq(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("no bearer token", error="")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(
            "the Authorization header must be 'Bearer <token>'", error="invalid_request"
        )
    return token


def _check_algorithms(conf: JwtConfig) -> tuple[str, ...]:
    """The pinned algorithms, refusing any that do not fit the key kind (alg confusion)."""
    algs = tuple(conf.algorithms) or (("HS256",) if conf.secret else ("RS256", "ES256", "EdDSA"))
    fitting = _SYMMETRIC if conf.secret else _ASYMMETRIC
    bad = [a for a in algs if a not in fitting]
    if bad:
        kind = "an HMAC secret" if conf.secret else "a public key / JWKS"
        raise AuthConfigError(
            f"server.auth.jwt.algorithms: {', '.join(bad)} cannot be used with {kind}; "
            f"use {', '.join(sorted(fitting))}"
        )
    return algs


def www_authenticate(metadata_url: str, error: AuthError | None = None) -> str:
    """The `WWW-Authenticate` value for a 401 (RFC 6750 + RFC 9728 `resource_metadata`)."""
    parts = [f'resource_metadata="{metadata_url}"']
    if error is not None and error.error:
        description = error.description.replace("\\", "").replace('"', "'")
        parts += [f'error="{error.error}"', f'error_description="{description}"']
    return "Bearer " + ", ".join(parts)


def protected_resource_metadata(resource: str, auth: AuthConfig) -> dict[str, Any]:
    """The RFC 9728 document served at `/.well-known/oauth-protected-resource`."""
    doc: dict[str, Any] = {
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "mcpfw",
    }
    if auth.jwt is not None:
        if auth.jwt.issuer:
            doc["authorization_servers"] = [auth.jwt.issuer]
        doc["resource_signing_alg_values_supported"] = list(auth.jwt.algorithms)
    return doc
