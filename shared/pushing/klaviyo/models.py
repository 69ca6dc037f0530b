"""Plain data the client returns or takes. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ImportErrorItem",
    "ImportJob",
    "RejectedProfile",
    "SubmitResult",
    "SubscribeProfile",
    "profile_index",
]

# "/data/attributes/profiles/data/12/attributes/email" -> 12 (a 400 on submit, and import errors);
# a bare "/data/12/..." is accepted too for import errors.
_PROFILE_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")
_BARE_POINTER = re.compile(r"^/data/(\d+)(?:/|$)")


def profile_index(pointer: str | None, *, allow_bare: bool = False) -> int | None:
    """Index of the profile a JSON pointer names, or None when it names no profile."""
    if not pointer:
        return None
    m = _PROFILE_POINTER.match(pointer) or (_BARE_POINTER.match(pointer) if allow_bare else None)
    return int(m.group(1)) if m else None


# Where a profile came from, opaque to the client: the pipeline uses the row's id in its plan (an int).
Locator = int | str


@dataclass(frozen=True, slots=True)
class RejectedProfile:
    """A profile that never reached Klaviyo (oversize) or that Klaviyo refused in a 400."""

    locator: Locator
    detail: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ImportJob:
    id: str
    status: str  # queued | processing | complete | cancelled
    total_count: int
    completed_count: int = 0
    failed_count: int = 0
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    expires_at: str | None = None

    @property
    def done(self) -> bool:
        return self.status in ("complete", "cancelled")

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> ImportJob:
        a = resource.get("attributes") or {}
        return cls(
            id=str(resource["id"]),
            status=str(a.get("status") or ""),
            total_count=int(a.get("total_count") or 0),
            completed_count=int(a.get("completed_count") or 0),
            failed_count=int(a.get("failed_count") or 0),
            created_at=a.get("created_at"),
            started_at=a.get("started_at"),
            completed_at=a.get("completed_at"),
            expires_at=a.get("expires_at"),
        )


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """Outcome of ``submit_import_job``.

    ``locators`` are the locators of the profiles in the job, in job order: an import error's
    ``index`` is a position in the *submitted* body (after any stripping), so map it with
    ``locator_for(index)``, never with the original batch.
    """

    job_id: str | None
    submitted: int
    rejected: list[RejectedProfile]
    locators: tuple[Locator, ...] = ()
    job: ImportJob | None = None

    def locator_for(self, index: int | None) -> Locator | None:
        if index is None or not 0 <= index < len(self.locators):
            return None
        return self.locators[index]


@dataclass(frozen=True, slots=True)
class ImportErrorItem:
    """One per-profile failure of an accepted job (``/import-errors``)."""

    index: int | None  # position in the job's profiles, from source.pointer
    code: str
    title: str
    detail: str
    pointer: str | None = None
    original_payload: Mapping[str, Any] | None = None
    id: str | None = None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> ImportErrorItem:
        a = resource.get("attributes") or {}
        source = a.get("source") or {}
        pointer = source.get("pointer") if isinstance(source, Mapping) else None
        return cls(
            index=profile_index(pointer, allow_bare=True),
            code=str(a.get("code") or ""),
            title=str(a.get("title") or ""),
            detail=str(a.get("detail") or ""),
            pointer=pointer,
            original_payload=a.get("original_payload"),
            id=resource.get("id"),
        )


@dataclass(frozen=True, slots=True)
class SubscribeProfile:
    """Someone to subscribe to email marketing, with their recorded consent.

    ``consented_at`` (when consent was collected, in the past) makes the call a historical import:
    no double opt-in mail, no "added to list" flows. ``phone_number`` is only set on the profile
    (no SMS consent is given).
    """

    email: str
    phone_number: str | None = None
    consented_at: datetime | str | None = field(default=None)

    def consented_at_text(self) -> str | None:
        value = self.consented_at
        if value is None or isinstance(value, str):
            return value
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat()
