"""The phrase checks of the description scanner: patterns, and the trigger words that gate them.

Each check is one case-insensitive regex run on normalised text. A check only runs on text
that contains one of its trigger words (cheap substring tests, compiled into one regex per
check), so the costly patterns see few strings. A test checks that triggers never hide a
sample the pattern alone would find.
"""

from __future__ import annotations

import re

__all__ = ["PHRASES", "SECRET", "SECRET_SENTENCE_VERB", "TRIGGERS", "TRIGGER_RE", "WORD"]

VERB = (
    r"(?:read|cat|open|load|include|send|pass|upload|provide|attach|copy|extract|print|show|"
    r"post|forward|transmit|leak|exfiltrate|append|add|put|insert|embed|get|fetch|access|list)"
)

PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (code, re.compile(pattern, re.IGNORECASE))
    for code, pattern in (
        (
            "hidden-instruction-tag",
            r"<\s*/?\s*(?:important|system|instructions?|secret|hidden|admin|assistant|prompt|"
            r"critical|mandatory|ai[-_ ]?(?:instructions?|note)"
            r"|note[-_ ]to[-_ ](?:ai|model|assistant)"
            r"|model[-_ ]instructions?)\b[^<>]{0,80}>"
            r"|\[\s*/?\s*(?:INST|SYSTEM|IMPORTANT)\s*\]|<\|im_(?:start|end)\|>|<<\s*/?\s*SYS\s*>>",
        ),
        (
            "instruction-override",
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|of\s+)*"
            r"(?:previous|prior|above|earlier|preceding|former|original|system|safety|existing)\s+"
            r"(?:instructions?|prompts?|rules?|directions?|guidelines?|messages?|context|policies)"
            r"|\byou\s+are\s+now\s+(?:a|an|in)\b|\bnew\s+(?:system\s+)?instructions?\s*:"
            r"|\bfrom\s+now\s+on,?\s+(?:you|always|never)\b",
        ),
        (
            "concealment",
            r"\b(?:do\s+not|don'?t|never|without|must\s+not|should\s+not)\s+"
            r"(?:tell(?:ing)?|inform(?:ing)?|mention(?:ing)?|reveal(?:ing)?|show(?:ing)?|"
            r"notify(?:ing)?|alert(?:ing)?|let(?:ting)?|disclos(?:e|ing)|explain(?:ing)?|report(?:ing)?)"
            r"\s+(?:\w+\s+){0,3}?(?:to\s+)?(?:the\s+)?users?\b"
            r"|\b(?:hide|conceal|keep)\s+(?:this|it|that|these)\s+(?:\w+\s+){0,2}?from\s+the\s+user"
            r"|\bthe\s+user\s+(?:must|should|shall)\s+(?:not|never)\s+(?:know|see|notice|be\s+told)"
            r"|\bdo\s+not\s+mention\s+(?:this|it|that)\b|\bkeep\s+(?:this|it)\s+(?:a\s+)?secret\b",
        ),
        (
            "secret-file-reference",
            r"(?:~|\$HOME|%USERPROFILE%)[/\\]\.[\w.-]+"
            r"|(?<![\w.])\.(?:ssh|gnupg|aws|kube|docker|azure)(?:[/\\][\w.-]+)?"
            r"|\bid_(?:rsa|dsa|ecdsa|ed25519)(?:\.pub)?\b"
            r"|(?<![\w.$])\.env(?:\.[\w-]+)?\b(?!\s*\()"
            r"|(?<![\w.])\.(?:netrc|npmrc|pypirc|pgpass|git-credentials|bash_history|zsh_history)\b"
            r"|\bcredentials\.json\b|\bauthorized_keys\b|\bknown_hosts\b|/etc/(?:shadow|passwd|sudoers)\b"
            r"|\b(?:claude_desktop_config|mcp)\.json\b|\bwallet\.dat\b"
            r"|\bprivate[\s_-]keys?\b",
        ),
        (
            "exfiltration-instruction",
            # "pass its content as 'sidenote'": data from elsewhere (its/their), or secrets,
            # smuggled into a parameter. "Put the text in the `text` field" is ordinary usage.
            rf"\b{VERB}\s+(?:(?:its|their)\s+(?:full\s+|entire\s+|whole\s+|complete\s+)?"
            r"(?:contents?|text|output|data)"
            r"|(?:the\s+|all\s+|any\s+|your\s+|these\s+)?(?:api\s+)?(?:keys?|tokens?|secrets?|"
            r"credentials?|passwords?|conversation|history))"
            r"\s+(?:of\s+[\w./~-]+\s+)?(?:as|in|into|via|inside)\s+(?:the\s+|a\s+)?"
            r"(?:['\"`]?\w+['\"`]?\s+(?:parameter|argument|field|param)\b|['\"`]\w+['\"`])"
            r"|\b(?:system\s+prompt|conversation\s+history|chat\s+history|entire\s+conversation|"
            r"previous\s+messages)\b[^.]{0,60}\b(?:parameter|argument|field|send|include|pass)\b"
            rf"|\b{VERB}\b[^.]{{0,40}}\b(?:system\s+prompt|conversation\s+history|chat\s+history|"
            r"entire\s+conversation)\b",
        ),
        (
            "cross-tool-instruction",
            r"\b(?:before|after|whenever|when|instead\s+of)\b[^.]{0,50}?"
            r"\b(?:any|every|all|each)\s+(?:other\s+)?(?:tools?|servers?|functions?)\b"
            r"|\bwhen\s+this\s+tool\s+is\s+(?:available|present|loaded|installed|enabled)"
            r"|\b(?:side[- ]effects?|effects?|impact)\s+(?:on|to)\s+(?:the\s+)?"
            r"(?:also\s+present\s+)?"
            r"['\"`]?[\w.-]+['\"`]?\s+tool\b"
            r"|(?<!this )(?<!the )(?<![.,;:!?] )(?<=[\w.`'\"-] )"
            r"tool\s+(?:must|should|shall|will)\s+(?:always\s+|now\s+|"
            r"instead\s+|also\s+|only\s+)?(?:send|use|call|include|forward|add|be\s+(?:called|used)"
            r"|redirect|cc|bcc)\b"
            r"|\b(?:change|modify|override|replace|redirect|alter)s?\s+(?:the\s+)?(?:behaviou?r|"
            r"recipients?|destination|arguments?|parameters?|output)\s+of\s+(?:the\s+|any\s+|all\s+"
            r"|other\s+)*['\"`]?[\w.-]+['\"`]?\s+(?:tools?|servers?)"
            r"|\b(?:all|any)\s+(?:emails?|messages?|requests?|payments?|transfers?)\s+(?:must|should"
            r"|shall)\s+(?:always\s+)?(?:be\s+)?(?:sent|forwarded|redirected|cc'?d|bcc'?d|copied)\s+to"
            r"|\b(?:tools?|servers?)\s+(?:from|on|of)\s+(?:other|another|different)\s+"
            r"(?:mcp\s+)?servers?\b[^.]{0,40}\b(?:must|should|instead)\b",
        ),
        (
            "coercion",
            r"\b(?:very\s+){2,}important\b|\botherwise\s+(?:the|this)\s+tool\s+will\s+(?:not|fail)"
            r"|\b(?:all\s+data\s+will\s+be\s+lost|the\s+application\s+will\s+crash)\b"
            r"|\byou\s+will\s+be\s+(?:punished|penalized|terminated|shut\s+down)\b",
        ),
    )
)

# A phrase check runs only on text containing one of its trigger words (lower case): cheap
# substring tests spare most strings the regexes. Each pattern above needs one of these.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "hidden-instruction-tag": ("<", "["),
    "instruction-override": (
        "ignore", "disregard", "forget", "override", "bypass", "you are now", "new instruction",
        "new system", "from now on",
    ),
    "concealment": ("user", "secret", "mention"),
    "secret-file-reference": (
        "~", "$home", "%userprofile%", ".ssh", ".gnupg", ".aws", ".kube", ".docker", ".azure",
        "id_", ".env", ".netrc", ".npmrc", ".pypirc", ".pgpass", ".git-credentials", "_history",
        "credentials.json", "authorized_keys", "known_hosts", "/etc/", ".json", "wallet.dat",
        "private",
    ),
    "exfiltration-instruction": (
        "parameter", "argument", "field", "param", "'", '"', "`", "system prompt",
        "conversation", "chat history", "previous messages",
    ),
    "cross-tool-instruction": (
        "tool", "server", "function", "email", "message", "request", "payment", "transfer",
    ),
    "coercion": ("important", "otherwise", "data will be lost", "will crash", "you will be"),
}  # fmt: skip

TRIGGER_RE = {
    code: re.compile("|".join(re.escape(w) for w in words)) for code, words in TRIGGERS.items()
}
WORD = re.compile(r"[\w.\-/~$%]*\Z")
SECRET = dict(PHRASES)["secret-file-reference"]

SECRET_SENTENCE_VERB = re.compile(rf"\b{VERB}\b", re.IGNORECASE)
