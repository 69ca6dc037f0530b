"""Typed Klaviyo errors: each carries Klaviyo's HTTP status, error code, title and detail.

Messages are one line and human-readable. They never contain the API key: the client scrubs it
from anything Klaviyo echoes back before an error is built (see ``KlaviyoClient``).

Hierarchy::

    KlaviyoError
    ├── KlaviyoBadRequest      400 and other 4xx about the request (not retried)
    ├── KlaviyoAuthError       401 / 403: bad key or missing scope (not retried)
    ├── KlaviyoNotFound        404: e.g. a list id that does not exist (not retried)
    └── KlaviyoUnavailable     retries exhausted (5xx, timeouts, dropped connections)
        ├── KlaviyoServerError 5xx
        └── KlaviyoThrottled   429 (still throttled after the retries, or Retry-After too long)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "KlaviyoAuthError",
    "KlaviyoBadRequest",
    "KlaviyoError",
    "KlaviyoNotFound",
    "KlaviyoServerError",
    "KlaviyoThrottled",
    "KlaviyoUnavailable",
    "error_for_status",
]


def _one_line(text: str | None, limit: int = 300) -> str:
    if not text:
        return ""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class KlaviyoError(Exception):
    """Base class: ``status`` (HTTP status or None), ``code``, ``detail``, ``title`` from Klaviyo."""

    def __init__(
        self,
        status: int | None,
        code: str | None,
        detail: str | None,
        title: str | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
        attempts: int = 1,
        message: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = _one_line(detail)
        self.title = _one_line(title)
        self.method = method
        self.path = path
        #: every entry of Klaviyo's ``errors`` array (id, status, code, title, detail, source)
        self.errors: list[Mapping[str, Any]] = list(errors)
        self.attempts = attempts
        self._message = _one_line(message, 500) if message else None
        super().__init__(self.__str__())

    @property
    def pointers(self) -> list[str]:
        """``source.pointer`` of every Klaviyo error entry that has one."""
        out = []
        for err in self.errors:
            src = err.get("source") or {}
            if isinstance(src, Mapping) and isinstance(src.get("pointer"), str):
                out.append(src["pointer"])
        return out

    def __str__(self) -> str:
        if self._message:
            return self._message
        where = f" on {self.method} {self.path}" if self.method and self.path else ""
        status = f" {self.status}" if self.status is not None else ""
        code = f" ({self.code})" if self.code else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        text = self.detail or self.title or "no detail given"
        return f"Klaviyo{status}{code}{where}{tries}: {text}"

    def reworded(self, message: str, **extra: Any) -> KlaviyoError:
        """The same error (same class and Klaviyo fields) with a message that says what it means here."""
        return type(self)(
            self.status,
            self.code,
            self.detail,
            self.title,
            method=self.method,
            path=self.path,
            errors=self.errors,
            message=message,
            **extra,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, detail={self.detail!r})"

    def __reduce__(self):  # picklable (Durable Functions activities may ship errors across processes)
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[KlaviyoError], state: dict[str, Any]) -> KlaviyoError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, err.__str__())
    return err


class KlaviyoBadRequest(KlaviyoError):
    """400 (or another non-retryable 4xx) about the request itself. Not retried.

    From ``submit_import_job``: ``rejected`` lists the profiles already identified as invalid
    when the request still failed after stripping them.
    """

    def __init__(self, *args: Any, rejected: Sequence[Any] = (), **kwargs: Any) -> None:
        self.rejected = list(rejected)
        super().__init__(*args, **kwargs)


class KlaviyoAuthError(KlaviyoError):
    """401 (key missing or wrong) or 403 (key lacks a scope). Not retried."""


class KlaviyoNotFound(KlaviyoError):
    """404: the resource (list, job) does not exist for this account. Not retried."""


class KlaviyoUnavailable(KlaviyoError):
    """Klaviyo kept failing (5xx, timeouts, dropped connections) until the retries ran out."""


class KlaviyoServerError(KlaviyoUnavailable):
    """A 5xx answer (retried; raised once the retries are exhausted)."""


class KlaviyoThrottled(KlaviyoUnavailable):
    """429. Retried after ``Retry-After``; raised when still throttled after the retries, or when
    ``Retry-After`` is longer than the retry policy is willing to wait (``retry_after`` seconds)."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


def error_for_status(status: int) -> type[KlaviyoError]:
    if status == 429:
        return KlaviyoThrottled
    if status >= 500:
        return KlaviyoServerError
    if status in (401, 403):
        return KlaviyoAuthError
    if status == 404:
        return KlaviyoNotFound
    return KlaviyoBadRequest
