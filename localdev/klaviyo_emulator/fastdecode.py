"""Parse and schema-check a bulk-import body in one C pass (msgspec), with types derived from the spec.

`msgspec` is optional: without it `build_decoder` returns None and the emulator parses with orjson and
validates with the generated validators (same answers, slower). The msgspec types are built from the same
schema (`ProfileImportJobCreateQuery` of the trimmed spec): objects become Structs that forbid unknown
members, `required` members are required, `enum` becomes Literal, `nullable` adds None, absent optional
members read as UNSET. The decoder is only a fast path: whenever it refuses a body, the exact errors come
from the generated validator, so the two never need to agree on wording, only on "valid" - and where the
mapping would be looser than the schema (e.g. string formats) building the decoder refuses instead.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Literal, Union

from .schema import ANNOTATIONS, REF_PREFIX

try:
    import msgspec
except ImportError:  # pragma: no cover - exercised only where msgspec is not installed
    msgspec = None  # type: ignore[assignment]  # optional speed-up: the orjson path is used without it

UNSET: Any = msgspec.UNSET if msgspec is not None else object()
AVAILABLE = msgspec is not None


class Unsupported(ValueError):
    pass


def to_builtins(value: Any) -> Any:
    """Structs (and lists of them) as plain dicts; UNSET members are left out."""
    return msgspec.to_builtins(value) if msgspec is not None else value


class _TypeBuilder:
    def __init__(self, schemas: dict[str, dict]):
        self.schemas = schemas
        self.structs: dict[str, Any] = {}
        self.counter = 0

    def build(self, node: dict, hint: str) -> Any:
        nullable = bool(node.get("nullable"))
        if "$ref" in node:
            extra = set(node) - ANNOTATIONS - {"$ref", "nullable"}
            if extra:
                raise Unsupported(f"$ref with siblings {sorted(extra)}")
            name = node["$ref"][len(REF_PREFIX) :]
            target = self.schemas[name]
            if name not in self.structs:
                self.structs[name] = None  # recursion guard
                self.structs[name] = self.build(target, name)
            elif self.structs[name] is None:
                raise Unsupported(f"recursive schema {name}")
            t = self.structs[name]
            return t | None if nullable and not target.get("nullable") else t
        keys = set(node) - ANNOTATIONS
        kind = node.get("type")
        if "oneOf" in node:
            if keys - {"oneOf", "nullable"}:
                raise Unsupported(f"oneOf with {sorted(keys)}")
            # A Union built from a computed tuple: the `X | Y` spelling ruff prefers cannot take one.
            t = Union[tuple(self.build(sub, hint) for sub in node["oneOf"])]  # noqa: UP007
        elif kind == "object":
            if keys - {"type", "properties", "required", "nullable"}:
                raise Unsupported(f"object with {sorted(keys)}")
            t = self.struct(node, hint) if "properties" in node else dict[str, Any]
        elif kind == "array":
            if keys - {"type", "items", "nullable"}:
                raise Unsupported(f"array with {sorted(keys)}")
            t = list[self.build(node.get("items", {}), hint + "Item")] if node.get("items") else list[Any]
        elif kind == "string":
            if keys - {"type", "enum", "nullable"}:
                raise Unsupported(f"string with {sorted(keys)}")  # e.g. format: msgspec would not check it
            t = Literal[tuple(node["enum"])] if "enum" in node else str
        elif kind == "integer":
            if keys - {"type", "nullable"}:
                raise Unsupported(f"integer with {sorted(keys)}")
            t = int
        elif kind == "number":
            if keys - {"type", "nullable"}:
                raise Unsupported(f"number with {sorted(keys)}")
            t = int | float
        elif kind == "boolean":
            if keys - {"type", "nullable"}:
                raise Unsupported(f"boolean with {sorted(keys)}")
            t = bool
        else:
            raise Unsupported(f"schema {sorted(keys)}")
        return t | None if nullable else t

    def struct(self, node: dict, hint: str) -> Any:
        required = set(node.get("required", ()))
        fields = []
        rename = {}
        for prop, sub in node["properties"].items():
            attr = prop if prop.isidentifier() and not prop.startswith("_") else f"m_{len(fields)}"
            if attr != prop:
                rename[attr] = prop
            t = self.build(sub, hint + prop.title().replace("_", "").replace("-", ""))
            fields.append((attr, t) if prop in required else (attr, t | msgspec.UnsetType, UNSET))
        self.counter += 1
        return msgspec.defstruct(
            f"{hint}{self.counter}",
            fields,
            kw_only=True,
            forbid_unknown_fields=True,
            rename=rename or None,
            gc=False,  # decoded JSON cannot refer back to itself: no reference cycles to collect
        )


def build_decoder(schemas: dict[str, dict], name: str) -> Any | None:
    """A msgspec JSON decoder for schema `name`, or None (msgspec missing or the schema not mappable)."""
    if msgspec is None:
        return None
    try:
        t = _TypeBuilder(schemas).build({"$ref": REF_PREFIX + name}, name)
    except Unsupported:
        return None
    return msgspec.json.Decoder(t)


def decode(decoder: Any, raw: bytes) -> Any | None:
    """The decoded body, or None when msgspec refuses it (invalid JSON or invalid against the schema)."""
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


_EMAIL = attrgetter("attributes.email")
_PHONE = attrgetter("attributes.phone_number")
_EXT = attrgetter("attributes.external_id")
_ID = attrgetter("id")
_ATTRS = attrgetter("attributes")


def import_columns(resources: list) -> dict[str, list]:
    """The columns the bulk path needs from decoded profile Structs: UNSET reads as None, and a column
    nobody sent is left out."""
    cols: dict[str, list] = {"attributes": list(map(_ATTRS, resources))}
    n = len(resources)
    for key, getter in (
        ("attributes.email", _EMAIL),
        ("attributes.phone_number", _PHONE),
        ("attributes.external_id", _EXT),
        ("id", _ID),
    ):
        values = list(map(getter, resources))
        unset = values.count(UNSET)
        if unset == n:
            continue
        cols[key] = [None if v is UNSET else v for v in values] if unset else values
    return cols
