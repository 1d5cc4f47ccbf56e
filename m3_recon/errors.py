"""Errors a person can act on: each names the vendor, what failed and what to change.

Messages never contain credentials; at most they name the environment variable to fix.
"""

from __future__ import annotations


class VendorError(RuntimeError):
    """A vendor call failed in a way the pipeline must not paper over."""

    def __init__(self, vendor: str, message: str, *, status: int | None = None, request_id: str | None = None):
        detail = []
        if status is not None:
            detail.append(f"HTTP {status}")
        if request_id:
            detail.append(f"request id {request_id}")
        suffix = f" ({', '.join(detail)})" if detail else ""
        super().__init__(f"{vendor}: {message}{suffix}")
        self.vendor, self.status, self.request_id = vendor, status, request_id


class VendorAuthError(VendorError):
    """Credentials were refused; the message says which variable to fix."""


class VendorRequestError(VendorError):
    """The vendor rejected the request itself (bad parameter, missing object); retrying will not help."""


class VendorUnavailableError(VendorError):
    """The vendor kept failing (5xx, 429, timeouts) after every allowed retry."""
