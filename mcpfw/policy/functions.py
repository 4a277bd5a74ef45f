"""The custom CEL functions for tool-call policy, as plain Python.

Each engine adapter exposes every entry of `FUNCTIONS` both as a global function
(`cleanPath(args.path)`) and as a method on its first argument (`args.path.cleanPath()`).
A function that cannot make sense of its input raises `ValueError`; the engine turns that
into an evaluation error, so a deny/ask rule that uses it fails closed (counts as matched)
and an allow rule does not match.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any
from urllib.parse import unquote, urlsplit

from mcpfw.policy.glob import glob_match

__all__ = ["FUNCTIONS", "MATCHES", "InvalidArgument", "Signature"]


def _show(text: str) -> str:
    """A short quotation of user input for an error message."""
    return repr(text if len(text) <= 60 else text[:60] + "...")


# --- paths -------------------------------------------------------------------------------


def clean_path(path: str) -> str:
    """Lexically normalise a path like Go's `path.Clean`; a backslash counts as a separator."""
    path = path.replace("\\", "/")
    if path == "":
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            # ".." at the root stays at the root
            continue
        out.append(part)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def path_within(path: str, root: str) -> bool:
    """True when the cleaned absolute `path` is `root` or below it (relative paths never are)."""
    cleaned, base = clean_path(path), clean_path(root)
    if not cleaned.startswith("/") or not base.startswith("/"):
        return False
    if base == "/":
        return True
    return cleaned == base or cleaned.startswith(base + "/")


def path_base(path: str) -> str:
    """The last element of the cleaned path (`/a/b.txt` → `b.txt`)."""
    cleaned = clean_path(path)
    if cleaned == "/":
        return "/"
    return cleaned.rsplit("/", 1)[-1]


SECRET_NAMES = frozenset(
    {".env", ".netrc", ".git-credentials", ".npmrc", ".pypirc", ".pgpass", "credentials",
     "credentials.json", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", ".htpasswd",
     "secrets.yaml", "secrets.yml", "secrets.json", ".vault-token", "kubeconfig"}
)  # fmt: skip
SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".kdbx", ".ppk", ".asc",
                   ".gpg", ".tfstate", ".ovpn")  # fmt: skip
SECRET_DIRS = frozenset({".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", "gcloud"})


def is_secret_path(path: str) -> bool:
    """True when a path (percent-decoded, cleaned, any case, trailing dots/spaces ignored)
    names a secret file (`.env*`, keys, credentials) or lies in a secret directory (`~/.ssh`)."""
    parts = [p.rstrip(" .\t\r\n").lower() for p in clean_path(url_decode(path)).split("/")]
    parts = [p for p in parts if p]
    if not parts:
        return False
    if any(p in SECRET_DIRS for p in parts):
        return True
    name = parts[-1]
    if name in SECRET_NAMES or name.startswith(".env.") or name.endswith(SECRET_SUFFIXES):
        return True
    return name.startswith(("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"))


# --- globs -------------------------------------------------------------------------------


# --- URLs and hosts ----------------------------------------------------------------------

_C0_OR_SPACE = "".join(chr(i) for i in range(0x21))
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp", "file"})


def _split_url(url: str) -> Any:
    # Parse like a browser/fetch client (WHATWG), so the firewall and the fetcher agree on
    # the host: strip C0 controls and spaces, drop tabs/newlines, and for special schemes
    # treat "\" as "/" (https://evil.com\@good.com is evil.com to a browser).
    url = url.strip(_C0_OR_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in _SPECIAL_SCHEMES:
        url = url.replace("\\", "/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    return parts


def _clean_host(host: str) -> str:
    host = unquote(host).lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        host = host.split("%", 1)[0]  # an IPv6 zone id (fe80::1%eth0) names no other host
    if not host.isascii():
        # Internationalised names: map to punycode (IDNA, with nameprep) as a fetcher would.
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"not a valid host name: {_show(host)}") from None
    if any(c in host for c in " \t\r\n/\\@#?%") or any(ord(c) < 0x20 for c in host):
        raise ValueError(f"not a valid host: {_show(host)}")
    return host


def url_host(url: str) -> str:
    """The URL's host, lower-cased, without port, brackets, userinfo or a trailing dot."""
    parts = _split_url(url)
    netloc = parts.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        host = netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    else:
        host = netloc.split(":", 1)[0]
    if not host:
        raise ValueError(f"URL has no host: {_show(url)}")
    return _clean_host(host)


def url_scheme(url: str) -> str:
    """The URL's scheme, lower-cased (`""` when it has none)."""
    return str(_split_url(url).scheme).lower()


def url_port(url: str) -> int:
    """The URL's port, or the scheme's default (80, 443; -1 when unknown)."""
    parts = _split_url(url)
    if parts.port is not None:
        return int(parts.port)
    return {"http": 80, "ws": 80, "https": 443, "wss": 443, "ftp": 21}.get(parts.scheme.lower(), -1)


def url_decode(text: str) -> str:
    """Percent-decode repeatedly (double encoding included) until nothing changes."""
    for _ in range(8):
        decoded = unquote(text)
        if decoded == text:
            return decoded
        text = decoded
    raise ValueError("too many levels of percent-encoding")


_METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
    }
)
_METADATA_IPS = frozenset(
    {
        ipaddress.ip_address(a)
        for a in (
            "169.254.169.254",
            "169.254.170.2",
            "100.100.100.200",
            "fd00:ec2::254",
            "192.0.0.192",
        )
    }
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    # inet_aton forms a resolver accepts: 127.1, 2130706433, 0x7f.0.0.1, 0177.0.0.1
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums: list[int] = []
    for p in parts:
        try:
            if p.lower().startswith("0x"):
                nums.append(int(p[2:] or "0", 16))
            elif len(p) > 1 and p.startswith("0"):
                nums.append(int(p, 8))
            else:
                if not p.isdigit():
                    return None
                nums.append(int(p, 10))
        except ValueError:
            return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    value = value << (8 * (5 - len(nums))) | last
    return ipaddress.IPv4Address(value)


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` denotes (legacy IPv4 forms included), or None for a name."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    return _legacy_ipv4(host)


def host_kind(host: str) -> str:
    """Classify a host: loopback, private, link-local, metadata, unspecified, multicast,
    reserved, public (IP addresses) or name (a DNS name that is none of the above)."""
    name = _clean_host(host) if host else ""
    if not name:
        raise ValueError("empty host")
    if name in _METADATA_NAMES:
        return "metadata"
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    ip = parse_ip(name)
    if ip is None:
        return "name"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return host_kind(str(embedded))
    if ip in _METADATA_IPS:
        return "metadata"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip.packed[0] == 0):
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or ip in _CGNAT:
        return "private"
    if not ip.is_global:
        return "reserved"
    return "public"


def is_ip(host: str) -> bool:
    """True when `host` is an IP address literal (legacy IPv4 forms included)."""
    return parse_ip(host) is not None


# --- email -------------------------------------------------------------------------------

_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


MAX_ADDRESS = 1024  # an address is at most 254 characters; leave room for a display name


def email_address(text: str) -> str:
    """The one address in `text` (`Name <a@b.c>` or `a@b.c`), domain lower-cased.
    Several addresses, or anything not a plain address, is an error."""
    text = text.strip()
    if len(text) > MAX_ADDRESS:
        raise ValueError(f"email address longer than {MAX_ADDRESS} characters")
    pairs = getaddresses([text])
    if len(pairs) != 1:
        raise ValueError(f"expected one email address, got {len(pairs)}: {_show(text)}")
    addr = pairs[0][1].strip()
    if addr.count("@") != 1 or not _ADDRESS.fullmatch(addr):
        raise ValueError(f"not a plain email address: {_show(text)}")
    local, domain = addr.split("@")
    return f"{local}@{domain.lower().rstrip('.')}"


def email_domain(text: str) -> str:
    """The lower-cased domain of the one address in `text` (see `emailAddress`)."""
    return email_address(text).rsplit("@", 1)[1]


# --- shell -------------------------------------------------------------------------------

SHELL_META = frozenset(";&|`$<>(){}[]*?~!#'\"\\\n\r\x00")


def has_shell_meta(text: str) -> bool:
    """True when `text` has a character a POSIX shell treats specially."""
    return any(c in SHELL_META for c in text)


MAX_COMMAND = 8192  # shlex is slow; a longer command line fails closed instead


def shell_split(text: str) -> list[str]:
    """Split a command line into words like a POSIX shell would (quotes, escapes)."""
    return list(_shell_split(text))


@functools.lru_cache(maxsize=256)  # rules tend to split the same command several times
def _shell_split(text: str) -> tuple[str, ...]:
    if len(text) > MAX_COMMAND:
        raise ValueError(f"command line longer than {MAX_COMMAND} characters")
    try:
        return tuple(shlex.split(text, comments=False, posix=True))
    except ValueError as exc:
        raise ValueError(f"cannot split command line: {exc}") from None


# --- git and lists ------------------------------------------------------------------------


def ref_branch(ref: str) -> str:
    """The branch a push refspec writes to: `+HEAD:refs/heads/Main ` → `main`."""
    ref = ref.strip()
    dest = ref.rsplit(":", 1)[-1].strip().lstrip("+")
    for prefix in ("refs/heads/", "heads/"):
        if dest.lower().startswith(prefix):
            dest = dest[len(prefix) :]
    return dest.lower()


def is_force_ref(ref: str) -> bool:
    """True when a refspec forces the update (a leading `+`)."""
    return ref.strip().startswith("+")


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", ""})


def as_bool(value: Any) -> bool:
    """A flag as clients send it: true/false, "true"/"yes"/"on"/"1" (any case, trimmed),
    "false"/"no"/"off"/"0"/"", numbers (non-zero is true), null (false); else an error."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError(f"not a flag: {_show(str(value))}")


def as_list(value: Any) -> list[Any]:
    """`value` if it is a list, else a one-element list (for args sent as one or many)."""
    return value if isinstance(value, list) else [value]


# --- portable string helpers (cel-expr-python has these natively via its strings extension)


def lower_ascii(text: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def upper_ascii(text: str) -> str:
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in text)


# --- registry ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """One custom function: its CEL name, parameter and result types, implementation."""

    name: str
    params: tuple[str, ...]  # "string" | "list" | "int" | "bool" | "dyn"
    result: str
    impl: Callable[..., Any]
    doc: str


FUNCTIONS: tuple[Signature, ...] = (
    Signature(
        "cleanPath", ("string",), "string", clean_path, "cleanPath('/w/a/../../etc') == '/etc'"
    ),
    Signature(
        "pathWithin",
        ("string", "string"),
        "bool",
        path_within,
        "pathWithin('/w/a/../b', '/w') == true",
    ),
    Signature("pathBase", ("string",), "string", path_base, "pathBase('/a/b.txt') == 'b.txt'"),
    Signature(
        "globMatch",
        ("string", "string"),
        "bool",
        glob_match,
        "globMatch('src/a/b.py', 'src/**.py') == true",
    ),
    Signature(
        "urlHost",
        ("string",),
        "string",
        url_host,
        "urlHost('https://u@Docs.Example.COM.:8443/x') == 'docs.example.com'",
    ),
    Signature("urlScheme", ("string",), "string", url_scheme, "urlScheme('HTTPS://x') == 'https'"),
    Signature("urlPort", ("string",), "int", url_port, "urlPort('https://x') == 443"),
    Signature("urlDecode", ("string",), "string", url_decode, "urlDecode('%252e%252e') == '..'"),
    Signature("hostKind", ("string",), "string", host_kind, "hostKind('127.1') == 'loopback'"),
    Signature("isIP", ("string",), "bool", is_ip, "isIP('::1') == true"),
    Signature(
        "emailAddress",
        ("string",),
        "string",
        email_address,
        "emailAddress('Bob <bob@Corp.com>') == 'bob@corp.com'",
    ),
    Signature(
        "emailDomain",
        ("string",),
        "string",
        email_domain,
        "emailDomain('bob@Corp.com') == 'corp.com'",
    ),
    Signature(
        "isSecretPath",
        ("string",),
        "bool",
        is_secret_path,
        "isSecretPath('/w/../home/u/.ssh/id_ed25519') == true",
    ),
    Signature(
        "refBranch",
        ("string",),
        "string",
        ref_branch,
        "refBranch('+HEAD:refs/heads/Main') == 'main'",
    ),
    Signature("isForceRef", ("string",), "bool", is_force_ref, "isForceRef('+main') == true"),
    Signature("asList", ("dyn",), "list", as_list, "asList('a') == ['a']"),
    Signature("asBool", ("dyn",), "bool", as_bool, "asBool(' Yes ') == true"),
    Signature(
        "hasShellMeta", ("string",), "bool", has_shell_meta, "hasShellMeta('ls; rm') == true"
    ),
    Signature(
        "shellSplit",
        ("string",),
        "list",
        shell_split,
        "shellSplit('git log \"a b\"') == ['git', 'log', 'a b']",
    ),
)

# Functions cel-expr-python gets from its strings extension; cel-python gets these shims.
STRING_SHIMS: dict[str, Callable[..., Any]] = {
    "lowerAscii": lower_ascii,
    "upperAscii": upper_ascii,
    "trim": lambda s: s.strip(" \t\n\r\f\v"),
    "replace": lambda s, old, new: s.replace(old, new),
    "split": lambda s, sep: s.split(sep),
    "join": lambda items, sep="": sep.join(items),
}


class InvalidArgument(ValueError):
    """An argument CEL rejects as such (cel-cpp's INVALID_ARGUMENT), e.g. a bad pattern."""


@functools.lru_cache(maxsize=512)
def _re2(pattern: str) -> Any:
    import re2  # type: ignore[import-untyped]  # google-re2: the RE2 that cel-cpp uses

    try:
        return re2.compile(pattern)
    except re2.error as exc:
        raise InvalidArgument(f"invalid regular expression: {exc}") from None


def regex_matches(text: str, pattern: str) -> bool:
    """CEL's built-in `text.matches(pattern)`: an RE2 search anywhere in `text`."""
    return _re2(pattern).search(text) is not None


# Not a custom function (rules keep calling CEL's own `matches`): the native engine computes
# the built-in in Python when it hoists it. cel-cpp compiles the pattern again on every
# evaluation (about 17 µs a call); RE2 from Python with the pattern compiled once takes ~2 µs.
MATCHES = Signature(
    "matches",
    ("string", "string"),
    "bool",
    regex_matches,
    "'report.PDF'.matches('(?i)\\.pdf$')",
)
