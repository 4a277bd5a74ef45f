"""Both engines expose the same custom functions, as functions and as methods."""

from __future__ import annotations

from typing import Any

import pytest

from mcpfw.policy.engine import CompileError, EvalError, get_engine
from mcpfw.policy.functions import FUNCTIONS

ARGS = {
    "path": "/workspace/a/../b.txt",
    "url": "https://User@Docs.Example.COM.:8443/x",
    "to": "Bob <bob@Example.com>",
    "cmd": "git log 'a b'",
    "l": ["x", "y"],
    "n": 5,
}

TRUE_EXPRESSIONS = [
    'cleanPath(args.path) == "/workspace/b.txt"',
    'args.path.cleanPath() == "/workspace/b.txt"',
    'pathWithin(args.path, "/workspace") && !pathWithin("/workspace/../etc", "/workspace")',
    'args.path.pathWithin("/workspace")',
    'pathBase(args.path) == "b.txt"',
    'isSecretPath("/w/../home/u/.ssh/id_rsa") && !args.path.isSecretPath()',
    'globMatch("src/a/b.py", "src/**.py") && !"src/a/b.py".globMatch("src/*.py")',
    'urlHost(args.url) == "docs.example.com" && args.url.urlHost() == "docs.example.com"',
    'urlScheme(args.url) == "https" && urlPort(args.url) == 8443',
    'urlDecode("%252e%252e") == ".."',
    'hostKind("127.1") == "loopback" && hostKind("example.com") == "name"',
    'isIP("::1") && !isIP("example.com")',
    'emailAddress(args.to) == "bob@example.com" && emailDomain(args.to) == "example.com"',
    'hasShellMeta("ls; rm") && !hasShellMeta("ls -la")',
    'shellSplit(args.cmd) == ["git", "log", "a b"]',
    'refBranch("+HEAD:refs/heads/Main") == "main" && isForceRef("+main")',
    'asList("a") == ["a"] && asList(args.l) == ["x", "y"] && asList(args.n).size() == 1',
    'asBool(" Yes ") && !asBool("off") && asBool(args.n) && !asBool(false) && !asBool(null)',
    '" Ab ".trim().lowerAscii() == "ab" && "ab".upperAscii() == "AB"',
    '"a-b".replace("-", "+") == "a+b" && "a,b".split(",") == ["a", "b"]',
    '["a", "b"].join(",") == "a,b"',
    'args.path.matches("(?i)B\\\\.TXT$") && args.path.startsWith("/w") && "x" in args.l',
]


@pytest.mark.parametrize("text", TRUE_EXPRESSIONS)
def test_expressions_hold_on_both_engines(engine: str, text: str) -> None:
    cel = get_engine(engine)
    assert cel.compile(text).run(cel.activation({"args": ARGS})) is True


def test_every_custom_function_is_exercised_above() -> None:
    used = " ".join(TRUE_EXPRESSIONS)
    assert [s.name for s in FUNCTIONS if s.name not in used] == []


@pytest.mark.parametrize(
    "text",
    [
        'urlHost("not a url") == "x"',
        'emailDomain("a@b.com, c@d.com") == "b.com"',
        'shellSplit("echo \\"open") == []',
        'cleanPath(args.n) == "x"',
        "args.missing == 1",
    ],
)
def test_function_failures_are_evaluation_errors(engine: str, text: str) -> None:
    cel = get_engine(engine)
    program = cel.compile(text)
    with pytest.raises(EvalError):
        program.run(cel.activation({"args": ARGS}))


def test_short_circuit_hides_an_error_on_both_engines(engine: str) -> None:
    cel = get_engine(engine)
    program = cel.compile('false && urlHost("bad") == "x"')
    assert program.run(cel.activation({"args": {}})) is False


@pytest.mark.parametrize("text", ["nosuch(1)", "args.x.nosuch()", "agentx.id", "1 +"])
def test_compile_errors_carry_a_position(engine: str, text: str) -> None:
    with pytest.raises(CompileError) as info:
        get_engine(engine).compile(text)
    issue = info.value.issues[0]
    assert issue.line == 1 and 1 <= issue.column <= len(text) + 1 and issue.message


def test_engine_activation_accepts_plain_json(engine: str) -> None:
    cel = get_engine(engine)
    data: dict[str, Any] = {"args": {"a": [1, {"b": None}], "f": 1.5}}
    assert cel.compile("args.a[1].b == null && args.f > 1.0").run(cel.activation(data))


def test_expressions_nested_too_deeply_are_compile_errors(engine: str) -> None:
    with pytest.raises(CompileError) as info:
        get_engine(engine).compile("(" * 3000 + "true" + ")" * 3000)
    assert len(info.value.issues) == 1 and info.value.issues[0].line >= 1


def test_long_or_chains_compile_on_both_engines(engine: str) -> None:
    cel = get_engine(engine)
    program = cel.compile(" || ".join(f"args.n == {i}" for i in range(100)))
    assert program.run(cel.activation({"args": {"n": 99}})) is True
