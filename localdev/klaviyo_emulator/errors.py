"""Klaviyo's error documents: `{"errors": [{"id", "status", "code", "title", "detail", "source"}]}`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

TITLES = {
    400: "Invalid input.",
    401: "Authentication credentials were not provided.",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
    405: "Method not allowed.",
    406: "Not acceptable.",
    409: "Conflict.",
    413: "Request entity too large.",
    415: "Unsupported media type.",
    429: "Request was throttled.",
    500: "A server error occurred.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}
CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_object(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    pointer: str | None = None,
    parameter: str | None = None,
) -> dict:
    source: dict[str, str] = {}
    if parameter is not None:
        source["parameter"] = parameter
    else:
        source["pointer"] = pointer if pointer is not None else "/data/"
    return {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code or CODES.get(status, "error"),
        "title": title or TITLES.get(status, "Error."),
        "detail": detail,
        "source": source,
    }


@dataclass
class ApiError(Exception):
    """Raised anywhere in a handler; becomes an error document with the given status."""

    status: int
    errors: list[dict] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def one(
        cls,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        pointer: str | None = None,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiError:
        err = error_object(status, detail, code=code, title=title, pointer=pointer, parameter=parameter)
        return cls(status, [err], dict(headers or {}))

    @classmethod
    def invalid(cls, items: list[tuple[str, str]]) -> ApiError:
        """400 with one error per (pointer, detail)."""
        return cls(400, [error_object(400, detail, pointer=pointer) for pointer, detail in items])

    @classmethod
    def bad_parameter(cls, parameter: str, detail: str) -> ApiError:
        return cls.one(400, detail, parameter=parameter)

    def document(self) -> dict:
        return {"errors": self.errors}


def throttle_detail(seconds: int) -> str:
    return f"Request was throttled. Expected available in {seconds} second{'' if seconds == 1 else 's'}."


def throttled(seconds: int) -> ApiError:
    return ApiError.one(429, throttle_detail(seconds), headers={"Retry-After": str(seconds)})
