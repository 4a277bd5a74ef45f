"""The sanitiser: hidden characters never reach the client's descriptions."""

from __future__ import annotations

from mcpfw.pins import sanitize_text, sanitize_tool, sanitize_tools, scan_tool


def test_ansi_control_bidi_invisible_and_tag_characters_are_stripped() -> None:
    dirty = "Get\x1b[8m hidden\x1b[0m we\u200bat\u202eher\x07" + chr(0xE0041) + "\x9b2J"
    assert sanitize_text(dirty) == "Get hidden weather"


def test_newlines_tabs_emoji_and_accents_are_kept() -> None:
    text = "Café ☕\nline\ttab 🧑\u200d💻 🏳️\u200d🌈"
    assert sanitize_text(text) == text


def test_carriage_returns_become_newlines() -> None:
    assert sanitize_text("a\r\nb\rc") == "a\nb\nc"


def test_descriptions_and_titles_are_sanitised_but_names_and_enums_are_not() -> None:
    tool = {
        "name": "we\u200bather",
        "title": "Weather\x1b[0m",
        "description": "Gets\u202e weather",
        "inputSchema": {
            "type": "object",
            "properties": {"unit": {"description": "C or F\x00", "enum": ["c\u200b"]}},
        },
    }
    clean = sanitize_tool(tool)
    assert clean["name"] == "we\u200bather"
    assert clean["title"] == "Weather"
    assert clean["description"] == "Gets weather"
    assert clean["inputSchema"]["properties"]["unit"] == {
        "description": "C or F",
        "enum": ["c\u200b"],
    }
    assert tool["description"] == "Gets\u202e weather"  # the input is not modified


def test_a_sanitised_description_has_no_character_findings_left() -> None:
    tool = {
        "name": "t",
        "description": "a\x1b[31mb\u200b\u202ec\x00" + chr(0xE0061),
        "inputSchema": {},
    }
    assert scan_tool(tool) != ()
    assert scan_tool(sanitize_tool(tool)) == ()


def test_sanitize_tools_reports_whether_anything_changed() -> None:
    clean = [{"name": "a", "description": "fine"}]
    assert sanitize_tools(clean) == (clean, False)
    out, changed = sanitize_tools([{"name": "a", "description": "x\x1b[0m"}, "not a tool"])
    assert changed and out == [{"name": "a", "description": "x"}, "not a tool"]
