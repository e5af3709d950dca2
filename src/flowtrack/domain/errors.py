"""Domain errors. The api layer maps each kind to one canonical gRPC code."""

from __future__ import annotations

from dataclasses import dataclass

# How many characters of a map key a field path shows.
MAP_KEY_SHOWN = 32


@dataclass(frozen=True, slots=True)
class Violation:
    """One refused field: its path, why in words, and an UPPER_SNAKE reason.

    The path convention, the same in every RPC: the proto field names
    (snake_case) from the request message down to the refused field, joined
    by dots; `[i]` for the i-th element (from 0) of a repeated field as sent;
    `[key]` for a map entry (see `map_entry`). E.g. `campaign.labels[team]`,
    `requests[2].recipients[1].recipient`, `event.occurred_at`,
    `events[3].status.failure_reason.code`, `filter.updated_after`. An empty
    path means the request as a whole.
    """

    field: str
    description: str
    reason: str = "INVALID"

    def under(self, prefix: str) -> Violation:
        """The same violation with its field path nested under `prefix`."""
        return Violation(f"{prefix}.{self.field}" if self.field else prefix, self.description, self.reason)


class FlowtrackError(Exception):
    """Base of every error a client can cause. `reason` is UPPER_SNAKE."""

    reason = "FLOWTRACK_ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(FlowtrackError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[Violation], message: str | None = None) -> None:
        text = message or "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        super().__init__(text)
        self.violations = violations


class NotFound(FlowtrackError):
    reason = "NOT_FOUND"


class AlreadyExists(FlowtrackError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(FlowtrackError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(FlowtrackError):
    reason = "RESOURCE_EXHAUSTED"


class QuotaExceeded(ResourceExhausted):
    """A quota of one caller is used up: `subject` names whose (e.g.
    "api_key:k1"), `description` which quota and its size. On gRPC the
    status carries them as a google.rpc.QuotaFailure."""

    def __init__(self, message: str, *, subject: str, description: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.subject = subject
        self.description = description


class Unavailable(FlowtrackError):
    reason = "UNAVAILABLE"


class Unauthenticated(FlowtrackError):
    """No credentials, or credentials that are not (or no longer) valid."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(FlowtrackError):
    """Valid credentials without the scope the call needs."""

    reason = "PERMISSION_DENIED"


def map_entry(field: str, key: str) -> str:
    """The path of the entry `key` of the map field `field`: `labels[team]`;
    `labels[]` for an empty key. A key longer than MAP_KEY_SHOWN characters
    is shown by its first MAP_KEY_SHOWN."""
    return f"{field}[{key[:MAP_KEY_SHOWN]}]"


def invalid(field: str, description: str, reason: str = "INVALID") -> InvalidArgument:
    """Shorthand for an InvalidArgument with one violation."""
    return InvalidArgument([Violation(field, description, reason)])
