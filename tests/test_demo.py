"""`make demo` (python -m mcpfw.demo) runs end to end and shows what it promises."""

from __future__ import annotations

import pytest

from mcpfw import demo


@pytest.mark.slow
def test_demo_shows_allowed_denied_and_asked_calls_then_the_audit_log(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert demo.main([]) == 0
    out = capfd.readouterr().out
    assert out.count("ALLOWED") == 4 and out.count("BLOCKED") == 3
    assert "the human answers: accept" in out and "the human answers: decline" in out
    assert "fs-no-secret-files" in out and "fs-move-ask" in out
    assert "OK: " in out  # mcpfw audit verify
    assert '"mcpServers"' in out and "install --client claude-desktop" in out
