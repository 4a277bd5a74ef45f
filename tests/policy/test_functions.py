"""The custom CEL functions as plain Python, including property tests."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpfw.policy import functions as f


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/workspace/../etc/passwd", "/etc/passwd"),
        ("/a/./b//c/", "/a/b/c"),
        ("/..", "/"),
        ("/../../x", "/x"),
        ("a/../../b", "../b"),
        ("", "."),
        ("./", "."),
        ("/w\\..\\etc", "/etc"),
    ],
)
def test_clean_path_normalises_lexically(path: str, clean: str) -> None:
    assert f.clean_path(path) == clean


def test_path_within_rejects_sibling_prefixes_and_relative_paths() -> None:
    assert f.path_within("/workspace/a", "/workspace")
    assert f.path_within("/workspace", "/workspace/")
    assert not f.path_within("/workspace-evil/a", "/workspace")
    assert not f.path_within("workspace/a", "/workspace")
    assert not f.path_within("/workspace/../etc", "/workspace")
    assert f.path_within("/anything", "/")


segments = st.lists(
    st.sampled_from(["..", ".", "", "a", "b", "workspace", "etc", "..\\..", "x/.."]),
    max_size=12,
)


@given(segments)
def test_a_path_within_the_prefix_never_escapes_it(parts: list[str]) -> None:
    path = "/workspace/" + "/".join(parts)
    if f.path_within(path, "/workspace"):
        # Whatever a POSIX resolver makes of it (treating backslashes as separators too),
        # the result stays under /workspace.
        resolved = posixpath.normpath(path.replace("\\", "/"))
        assert resolved == "/workspace" or resolved.startswith("/workspace/")


@given(st.text(max_size=40))
def test_clean_path_is_idempotent(path: str) -> None:
    once = f.clean_path(path)
    assert f.clean_path(once) == once


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        ("src/a.py", "src/*.py", True),
        ("src/a/b.py", "src/*.py", False),
        ("src/a/b.py", "src/**.py", True),
        ("a.txt", "?.txt", True),
        ("ab.txt", "?.txt", False),
        ("b.txt", "[abc].txt", True),
        ("d.txt", "[!abc].txt", True),
        ("a.txt", "[!abc].txt", False),
        ("a*b", "a\\*b", True),
        ("axb", "a\\*b", False),
        ("api.github.com", "*.github.com", True),
        ("github.com", "*.github.com", False),
    ],
)
def test_glob_match(text: str, pattern: str, expected: bool) -> None:
    assert f.glob_match(text, pattern) is expected


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Docs.Example.COM.:8443/x", "docs.example.com"),
        ("https://user:pw@example.com/", "example.com"),
        ("https://evil.com\\@good.com/", "evil.com"),
        ("  https://example.com/  ", "example.com"),
        ("https://exa\tmple.com/", "example.com"),
        ("https://[::1]:8080/", "::1"),
        ("https://%65vil.com/", "evil.com"),
        ("https://ＥＸＡＭＰＬＥ.com/", "example.com"),
        ("https://bücher.de/", "xn--bcher-kva.de"),
    ],
)
def test_url_host_parses_like_a_fetch_client(url: str, host: str) -> None:
    assert f.url_host(url) == host


@pytest.mark.parametrize("url", ["no-host", "https://", "https://a b.com/", "https://x:99999/"])
def test_url_host_raises_on_what_it_cannot_parse(url: str) -> None:
    with pytest.raises(ValueError):
        f.url_host(url)


def test_url_scheme_port_and_decode() -> None:
    assert f.url_scheme("HTTPS://x") == "https"
    assert f.url_port("https://x") == 443
    assert f.url_port("http://x:8080/") == 8080
    assert f.url_port("gopher://x") == -1
    assert f.url_decode("%252e%252e") == ".."


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f.0.0.1", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("localhost", "loopback"),
        ("app.localhost.", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fd12::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("169.254.169.254", "metadata"),
        ("metadata.google.internal", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("0.0.0.0", "unspecified"),
        ("0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("192.0.2.1", "private"),
        ("8.8.8.8", "public"),
        ("2001:4860:4860::8888", "public"),
        ("example.com", "name"),
        ("1.2.3.4.5", "name"),
    ],
)
def test_host_kind_classifies_addresses_however_written(host: str, kind: str) -> None:
    assert f.host_kind(host) == kind


KINDS = {
    "loopback",
    "private",
    "link-local",
    "metadata",
    "unspecified",
    "multicast",
    "reserved",
    "public",
}


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_host_kind_of_any_ipv4_is_a_documented_kind_and_agrees_in_every_spelling(n: int) -> None:
    dotted = ".".join(str(n >> s & 255) for s in (24, 16, 8, 0))
    kind = f.host_kind(dotted)
    assert kind in KINDS
    assert f.host_kind(str(n)) == kind
    assert f.host_kind(hex(n)) == kind
    assert f.host_kind(f"::ffff:{dotted}") == kind


def test_is_ip() -> None:
    assert f.is_ip("::1") and f.is_ip("127.1") and not f.is_ip("example.com")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("bob@Example.COM", "bob@example.com"),
        ("  Bob <bob@example.com> ", "bob@example.com"),
        ('"bob@example.com" <x@evil.example>', "x@evil.example"),
    ],
)
def test_email_address_extracts_the_real_address(text: str, address: str) -> None:
    assert f.email_address(text) == address


@pytest.mark.parametrize(
    "text",
    [
        "a@x.com, b@y.com",
        "a@x.com@y.com",
        "a@ｅｘａｍｐｌｅ.com",
        "not an address",
        "a@x.com\nBcc: b@y",
    ],
)
def test_email_address_rejects_anything_but_one_plain_address(text: str) -> None:
    with pytest.raises(ValueError):
        f.email_address(text)


@pytest.mark.parametrize(
    "path",
    [
        "/workspace/.env",
        "/workspace/config/.ENV.production",
        "/workspace/server.key. ",
        "/workspace/../root/.ssh/config",
        "/home/u/.aws/credentials",
        "/w/id_ed25519.pub",
        "/w/%2eenv",
        "C:\\Users\\u\\.ssh\\id_rsa",
        "/w/tls.PEM",
    ],
)
def test_secret_paths_are_recognised_however_written(path: str) -> None:
    assert f.is_secret_path(path)


@pytest.mark.parametrize("path", ["/workspace/environment.md", "/w/keys.txt", "/", "", "/w/env"])
def test_ordinary_paths_are_not_secret(path: str) -> None:
    assert not f.is_secret_path(path)


def test_shell_helpers() -> None:
    assert f.shell_split("git log 'a b'") == ["git", "log", "a b"]
    assert (
        f.has_shell_meta("ls; rm") and f.has_shell_meta("a\nb") and not f.has_shell_meta("ls -la")
    )
    with pytest.raises(ValueError):
        f.shell_split("echo 'unterminated")


def test_slow_parsers_refuse_oversized_input_and_errors_quote_briefly() -> None:
    with pytest.raises(ValueError, match="longer than 8192"):
        f.shell_split("a " * 5000)
    with pytest.raises(ValueError, match="longer than 1024") as info:
        f.email_address("a" * 2000 + "@example.com")
    assert len(str(info.value)) < 100
    with pytest.raises(ValueError) as info:
        f.url_host("https://" + "a b" * 10_000)
    assert len(str(info.value)) < 120


def test_as_bool_reads_flags_and_rejects_anything_else() -> None:
    assert [f.as_bool(v) for v in (True, " YES ", "on", "1", 2, 0.5)] == [True] * 6
    assert [f.as_bool(v) for v in (False, "no", "OFF", "0", "", 0, None)] == [False] * 7
    for bad in ("maybe", [True], {"a": 1}):
        with pytest.raises(ValueError):
            f.as_bool(bad)


def test_git_and_list_helpers() -> None:
    assert f.ref_branch(" +HEAD:refs/heads/Main ") == "main"
    assert f.ref_branch("feature:release/1") == "release/1"
    assert f.is_force_ref("+main") and not f.is_force_ref("main")
    assert f.as_list("a") == ["a"] and f.as_list(["a"]) == ["a"]


def test_every_function_is_documented_with_an_example() -> None:
    names = [s.name for s in f.FUNCTIONS]
    assert len(names) == len(set(names))
    for sig in f.FUNCTIONS:
        assert sig.name in sig.doc
