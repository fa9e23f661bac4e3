"""Typed Label Studio client errors (`worker.labelstudio.client` re-exports them).

`LabelStudioUnavailable` (connection errors, timeouts, 5xx, 408, 429) is the only retryable one;
the media errors are permanent. Messages never carry tokens or query strings.
"""

from __future__ import annotations

__all__ = [
    "LabelStudioAuthError",
    "LabelStudioError",
    "LabelStudioNotFound",
    "LabelStudioUnavailable",
    "MediaDeadline",
    "MediaNotFound",
    "MediaRefused",
    "MediaTooLarge",
]


class LabelStudioError(Exception):
    """A Label Studio request failed; ``status`` is the HTTP status, if there was a reply."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioUnavailable(LabelStudioError):
    """Connection error, timeout or 5xx: retryable."""


class LabelStudioAuthError(LabelStudioError):
    """401/403: the token is wrong, revoked, or lacks access (legacy tokens disabled?)."""


class LabelStudioNotFound(LabelStudioError):
    """404 from the REST API (the object was deleted, or never existed)."""


class MediaNotFound(LabelStudioNotFound):
    """404 for a media URL."""


class MediaTooLarge(LabelStudioError):
    """The media file is larger than the client's ``max_bytes``."""


class MediaRefused(LabelStudioError):
    """A media URL or address the media policy does not allow (permanent, not retried)."""


class MediaDeadline(LabelStudioError):
    """A media download that did not finish within its total deadline (permanent)."""
