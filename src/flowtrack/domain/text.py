"""Rules every text of a request obeys, whatever the field and the backend.

NUL (U+0000) is refused in every text field: PostgreSQL's text cannot hold
it, and one database storing what the other refuses would make the same
request succeed on one backend and fail on the other. So the rule is
decided here, once, and the faces apply it to every string of a request
(a map's keys and values, repeated and nested fields too) before any use
case or store sees it: INVALID_ARGUMENT, a violation per field, reason
NUL_CHARACTER.
"""

from __future__ import annotations

from collections.abc import Iterable

from flowtrack.domain.errors import InvalidArgument, Violation

NUL = "\x00"
NUL_REASON = "NUL_CHARACTER"
NUL_DESCRIPTION = "must not contain NUL (U+0000)"
# Violations named at most (a request full of NULs is refused just the same).
MAX_NUL_VIOLATIONS = 20


def nul_violation(field: str, value: str) -> Violation | None:
    """The violation of text `value` at `field` if it holds a NUL, else None."""
    if NUL in value:
        return Violation(field, NUL_DESCRIPTION, NUL_REASON)
    return None


def refuse_nul(texts: Iterable[tuple[str, str]]) -> None:
    """Raise InvalidArgument naming each field (path, text) of `texts` that
    holds a NUL; nothing if none does."""
    found: list[Violation] = []
    for field, value in texts:
        violation = nul_violation(field, value)
        if violation is not None:
            found.append(violation)
            if len(found) >= MAX_NUL_VIOLATIONS:
                break
    if found:
        raise InvalidArgument(found)
