"""What the emulator takes from Klaviyo's spec (the trimmed copy beside this file).

Per operation: its path and method, the rate limits (`x-klaviyo-ratelimit`), the query parameters it
declares (with page-size bounds, the enums of `fields[...]`, `include`, `sort`, and the filter fields and
operators its description allows) and the request-body schema, compiled into a validator.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .schema import SchemaCompiler, Validator

SPEC_PATH = Path(__file__).resolve().parent / "openapi-trimmed.json"

# Revisions Klaviyo has published (GA releases); the header may add a ".suffix" (e.g. "2026-07-15.pre").
# 2026-10-15 is what klaviyo-api 25.0.0 sends. Retired revisions are still accepted (the emulator does not
# model retirement).
KNOWN_REVISIONS = frozenset(
    {
        "2022-10-17",
        "2023-01-24",
        "2023-02-22",
        "2023-06-15",
        "2023-07-15",
        "2023-08-15",
        "2023-09-15",
        "2023-10-15",
        "2023-12-15",
        "2024-02-15",
        "2024-05-15",
        "2024-06-15",
        "2024-07-15",
        "2024-10-15",
        "2025-01-15",
        "2025-04-15",
        "2025-07-15",
        "2025-10-15",
        "2026-01-15",
        "2026-04-15",
        "2026-07-15",
        "2026-10-15",
    }
)
REVISION_FORMAT = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.[a-z0-9]+)?$")
_RATE = re.compile(r"^(\d+)/([smhd])$")
_WINDOW_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FILTER_RULE = re.compile(r"`([^`]+)`: ((?:`[^`]+`(?:, )?)+)")


@dataclass(frozen=True)
class RateLimit:
    limit: int
    window: int  # seconds
    name: str  # burst | steady | daily


@dataclass
class Parameter:
    name: str
    schema: dict
    description: str = ""

    @property
    def enum(self) -> frozenset[str] | None:
        values = self.schema.get("items", {}).get("enum") or self.schema.get("enum")
        return frozenset(values) if values else None


@dataclass
class Operation:
    operation_id: str
    method: str
    path: str
    rate_limits: tuple[RateLimit, ...]
    parameters: dict[str, Parameter]
    body_schema: str | None
    success_status: int
    response_schema: str | None
    scopes: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @cached_property
    def filter_rules(self) -> dict[str, frozenset[str]]:
        """field -> allowed operators, read from the filter parameter's description."""
        param = self.parameters.get("filter")
        if param is None:
            return {}
        rules = {}
        for name, ops in _FILTER_RULE.findall(param.description):
            rules[name] = frozenset(re.findall(r"`([^`]+)`", ops))
        return rules

    def page_bounds(self) -> tuple[int, int, int] | None:
        """(default, minimum, maximum) of page[size], if the operation pages."""
        param = self.parameters.get("page[size]")
        if param is None:
            return None
        s = param.schema
        return int(s.get("default", 20)), int(s.get("minimum", 1)), int(s.get("maximum", 100))


def _rate_limits(raw: dict | None) -> tuple[RateLimit, ...]:
    limits = []
    for name, text in (raw or {}).items():
        m = _RATE.match(text)
        if m:
            limits.append(RateLimit(int(m.group(1)), _WINDOW_SECONDS[m.group(2)], name))
    return tuple(sorted(limits, key=lambda r: r.window))


def _ref_name(node: dict | None) -> str | None:
    ref = (node or {}).get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None


class Spec:
    def __init__(self, path: Path = SPEC_PATH):
        self.document = json.loads(path.read_text())
        self.revision: str = self.document["info"]["version"]
        self.schemas: dict[str, dict] = self.document["components"]["schemas"]
        self.compiler = SchemaCompiler(self.schemas)
        self.operations: dict[str, Operation] = {}
        for path_template, methods in self.document["paths"].items():
            for method, op in methods.items():
                params = {
                    p["name"]: Parameter(p["name"], p.get("schema", {}), p.get("description", ""))
                    for p in op.get("parameters", [])
                    if p.get("in") == "query"
                }
                body = op.get("requestBody", {}).get("content", {})
                body_schema = None
                for content in body.values():
                    body_schema = _ref_name(content.get("schema"))
                success = min(int(code) for code in op["responses"] if code.isdigit())
                success_content = op["responses"][str(success)].get("content", {})
                response_schema = None
                for content in success_content.values():
                    response_schema = _ref_name(content.get("schema"))
                self.operations[op["operationId"]] = Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    path=path_template,
                    rate_limits=_rate_limits(op.get("x-klaviyo-ratelimit")),
                    parameters=params,
                    body_schema=body_schema,
                    success_status=success,
                    response_schema=response_schema,
                    scopes=tuple(op.get("x-klaviyo-scopes", ())),
                )

    def request_validator(self, op: Operation) -> Validator | None:
        return self.compiler.compile_ref(op.body_schema, strict=True) if op.body_schema else None

    def response_validator(self, schema_name: str) -> Validator:
        """Lenient (extra members allowed): for tests that check the emulator's answers against the spec."""
        return self.compiler.compile_ref(schema_name, strict=False)


def check_revision(value: str | None) -> str | None:
    """None when acceptable, else the reason it is not."""
    if value is None or not value.strip():
        return "The 'revision' header is required (format YYYY-MM-DD)."
    m = REVISION_FORMAT.match(value.strip())
    if not m:
        return f"Invalid revision header value '{value}': the format is YYYY-MM-DD[.suffix]."
    if m.group(1) not in KNOWN_REVISIONS:
        return f"'{value}' is not a valid revision."
    return None
