"""Compile the OpenAPI 3.0 schemas of Klaviyo's spec into fast Python validators.

A generic JSON Schema library walks the schema for every value; at 10,000 profiles per request that is
the bottleneck of the whole emulator. This module instead generates Python source for each schema once
(in the spirit of fastjsonschema) and ``exec``s it, so validating a profile is a handful of dict look-ups
and ``type()`` checks. Unlike fastjsonschema it collects *every* error with its JSON pointer (Klaviyo
answers one error per bad field, all of them), and it knows the OpenAPI 3.0 dialect (``nullable``,
``$ref`` siblings).

Supported keywords: ``$ref type nullable properties required additionalProperties enum items allOf
oneOf anyOf format minItems maxItems minLength maxLength minimum maximum``. Annotations are ignored;
any other keyword raises at compile time so a newer spec cannot be validated silently wrong.

``strict=True`` (used for request bodies) rejects members an object schema does not declare, as Klaviyo
does ("'first_name' is not a valid field ..."); objects without ``properties`` stay free-form.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from operator import itemgetter, methodcaller
from typing import Any

Errors = list[tuple[str, str]]
Validator = Callable[[Any, str, Errors], None]

ANNOTATIONS = frozenset(
    {"description", "example", "examples", "default", "title", "deprecated", "readOnly", "writeOnly", "xml"}
)
SUPPORTED = frozenset(
    {
        "$ref",
        "type",
        "nullable",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "items",
        "allOf",
        "oneOf",
        "anyOf",
        "format",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
    }
)
REF_PREFIX = "#/components/schemas/"

TYPE_CHECKS = {
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
    "string": "type({v}) is str",
    "boolean": "({v} is True or {v} is False)",
    "integer": "(type({v}) is int or (type({v}) is float and {v}.is_integer()))",
    "number": "(type({v}) is int or type({v}) is float)",
    "null": "{v} is None",
}
ARTICLE = {"object": "an object", "array": "an array", "integer": "an integer"}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def escape_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _field(pointer: str) -> str:
    last = pointer.rsplit("/", 1)[-1]
    return f"'{last.replace('~1', '/').replace('~0', '~')}'" if last else "The request body"


def _expected(types: tuple[str, ...], nullable: bool) -> str:
    words = [ARTICLE.get(t, f"a {t}") for t in types]
    if nullable:
        words.append("null")
    return " or ".join(words)


def _is_datetime(value: str) -> bool:
    """ISO 8601 date and time (a bare date is not a date-time)."""
    if len(value) < 11 or value[10] not in "Tt ":
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


FORMATS = {"date-time": "_is_datetime", "date": "_is_date"}


def _err_type(errs: Errors, pointer: str, expected: str, value: Any) -> None:
    errs.append((pointer, f"{_field(pointer)} must be {expected}, not {json_type(value)}."))


def _err(errs: Errors, pointer: str, detail: str) -> None:
    errs.append((pointer, detail.replace("{field}", _field(pointer))))


def _esc(token: Any) -> str:
    return escape_token(str(token))


class SchemaCompiler:
    """Generates one Python function per compiled schema; shares helper functions between them."""

    def __init__(self, schemas: dict[str, dict]):
        self.schemas = schemas
        self._cache: dict[tuple[str, bool], Validator] = {}

    def compile_ref(self, name: str, *, strict: bool = True) -> Validator:
        key = (name, strict)
        if key not in self._cache:
            self._cache[key] = self.compile({"$ref": REF_PREFIX + name}, strict=strict, name=name)
        return self._cache[key]

    def compile(self, schema: dict, *, strict: bool = True, name: str = "schema") -> Validator:
        gen = _Generator(self.schemas, strict)
        entry = gen.function(schema)
        source = "\n".join(gen.module)
        namespace: dict[str, Any] = {
            "_err": _err,
            "_err_type": _err_type,
            "_esc": _esc,
            "_is_datetime": _is_datetime,
            "_is_date": _is_date,
            **gen.constants,
        }
        exec(compile(source, f"<klaviyo-schema {name}>", "exec"), namespace)
        validator = namespace[entry]
        validator.__doc__ = f"Validate against {name}; append (pointer, detail) pairs to errs."
        validator.source = source  # type: ignore[attr-defined]  # the generated code, kept for debugging
        return validator


class _Generator:
    def __init__(self, schemas: dict[str, dict], strict: bool):
        self.schemas = schemas
        self.strict = strict
        self.lines: list[str] = []  # the body being generated
        self.module: list[str] = []  # finished functions
        self.constants: dict[str, Any] = {}
        self.counter = 0
        self.ref_functions: dict[tuple[str, bool], str] = {}
        self.inlining: list[str] = []

    # -- helpers -------------------------------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any) -> str:
        for name, existing in self.constants.items():
            if type(existing) is type(value) and existing == value:
                return name
        name = self.fresh("_C")
        self.constants[name] = value
        return name

    def resolve(self, ref: str) -> tuple[str, dict]:
        if not ref.startswith(REF_PREFIX):
            raise ValueError(f"unsupported $ref {ref!r}")
        name = ref[len(REF_PREFIX) :]
        return name, self.schemas[name]

    @staticmethod
    def ptr(parts: list[str]) -> str:
        """A Python expression for the JSON pointer; parts are Python expressions (evaluated on error only)."""
        merged: list[str] = []
        for part in parts:
            if merged and part.startswith("'") and merged[-1].startswith("'"):
                merged[-1] = repr(eval(merged[-1]) + eval(part))
            else:
                merged.append(part)
        return " + ".join(merged) or "''"

    # -- code generation -----------------------------------------------------------------------------------
    def function(self, schema: dict, strict: bool | None = None) -> str:
        """Emit `def fN(v, ptr, errs)` validating `schema`; returns its name."""
        name = self.fresh("_f")
        body: list[str] = []
        saved, self.lines = self.lines, body
        self.emit(schema, "v", ["ptr"], 1, self.strict if strict is None else strict)
        self.lines = saved
        self.module.append(f"def {name}(v, ptr, errs):")
        self.module.extend(body or ["    pass"])
        self.module.append("")
        return name

    def emit(self, schema: dict, var: str, ptr: list[str], depth: int, strict: bool) -> None:
        pad = "    " * depth
        out = self.lines.append
        unknown = set(schema) - SUPPORTED - ANNOTATIONS
        unknown = {k for k in unknown if not k.startswith("x-")}
        if unknown:
            raise ValueError(f"schema keyword(s) not supported by the emulator's validator: {sorted(unknown)}")

        if "$ref" in schema:
            ref_name, target = self.resolve(schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k not in ("$ref", "nullable")}
            nullable = bool(schema.get("nullable"))
            if nullable:
                out(f"{pad}if {var} is not None:")
                depth += 1
                pad += "    "
            if siblings:
                self.emit(siblings, var, ptr, depth, strict)
            if ref_name in self.inlining:  # recursive schema: call a function instead of inlining forever
                key = (ref_name, strict)
                if key not in self.ref_functions:
                    self.ref_functions[key] = "pending"
                    self.ref_functions[key] = self.function(target, strict)
                out(f"{pad}{self.ref_functions[key]}({var}, {self.ptr(ptr)}, errs)")
            else:
                self.inlining.append(ref_name)
                self.emit(target, var, ptr, depth, strict)
                self.inlining.pop()
            return

        nullable = bool(schema.get("nullable"))
        types = schema.get("type")
        types = (types,) if isinstance(types, str) else tuple(types or ())
        if "null" in types:
            nullable = True
            types = tuple(t for t in types if t != "null")

        guard_opened = False
        if nullable:
            out(f"{pad}if {var} is not None:")
            depth += 1
            pad += "    "
            guard_opened = True
        if types:
            check = " or ".join(TYPE_CHECKS[t].format(v=var) for t in types)
            out(f"{pad}if not ({check}):")
            out(f"{pad}    _err_type(errs, {self.ptr(ptr)}, {_expected(types, nullable)!r}, {var})")
            out(f"{pad}else:")
            depth += 1
            pad += "    "
        start = len(self.lines)
        self.emit_keywords(schema, types, var, ptr, depth, strict)
        if types and len(self.lines) == start:
            out(f"{pad}pass")
        del guard_opened

    def emit_keywords(
        self, schema: dict, types: tuple[str, ...], var: str, ptr: list[str], depth: int, strict: bool
    ) -> None:
        pad = "    " * depth
        out = self.lines.append

        def guarded(type_name: str) -> tuple[str, int]:
            """Open an `if isinstance` block unless the type is already known; return (pad, depth)."""
            if types == (type_name,):
                return pad, depth
            out(f"{pad}if {TYPE_CHECKS[type_name].format(v=var)}:")
            return pad + "    ", depth + 1

        if "enum" in schema:
            values = tuple(schema["enum"])
            options = ", ".join(repr(x) for x in values)
            out(f"{pad}if {var} not in {self.const(values)}:")
            out(f"{pad}    _err(errs, {self.ptr(ptr)}, {('{field} must be one of: ' + options + '.')!r})")

        if "format" in schema and schema["format"] in FORMATS:
            p, _ = guarded("string")
            out(f"{p}if not {FORMATS[schema['format']]}({var}):")
            out(f"{p}    _err(errs, {self.ptr(ptr)}, {('{field} must be a valid ' + schema['format'] + '.')!r})")

        for keyword, op, what in (("minLength", "<", "at least"), ("maxLength", ">", "at most")):
            if keyword in schema:
                p, _ = guarded("string")
                n = schema[keyword]
                out(f"{p}if len({var}) {op} {n}:")
                out(f"{p}    _err(errs, {self.ptr(ptr)}, {'{field} must have ' + what + f' {n} characters.'!r})")
        for keyword, op, what in (("minimum", "<", "at least"), ("maximum", ">", "at most")):
            if keyword in schema:
                n = schema[keyword]
                out(f"{pad}if (type({var}) is int or type({var}) is float) and {var} {op} {n!r}:")
                out(f"{pad}    _err(errs, {self.ptr(ptr)}, {'{field} must be ' + what + f' {n}.'!r})")

        if "properties" in schema or "required" in schema or "additionalProperties" in schema:
            p, d = guarded("object")
            self.emit_object(schema, var, ptr, d, strict)

        if "items" in schema or "minItems" in schema or "maxItems" in schema:
            p, d = guarded("array")
            for keyword, op, what in (("minItems", "<", "at least"), ("maxItems", ">", "at most")):
                if keyword in schema:
                    n = schema[keyword]
                    out(f"{p}if len({var}) {op} {n}:")
                    out(f"{p}    _err(errs, {self.ptr(ptr)}, {'{field} must have ' + what + f' {n} items.'!r})")
            if "items" in schema and set(schema["items"]) - ANNOTATIONS:
                idx, item = self.fresh("i"), self.fresh("x")
                out(f"{p}for {idx}, {item} in enumerate({var}):")
                self.emit(schema["items"], item, [*ptr, "'/'", f"str({idx})"], d + 1, strict)

        for sub in schema.get("allOf", ()):
            # Members may be declared by another branch, so strictness cannot apply per branch.
            self.emit(sub, var, ptr, depth, False)

        for keyword in ("oneOf", "anyOf"):
            if keyword not in schema:
                continue
            funcs = [self.function(sub, strict) for sub in schema[keyword]]
            n_ok = self.fresh("n")
            out(f"{pad}{n_ok} = 0")
            for fn in funcs:
                tmp = self.fresh("e")
                out(f"{pad}{tmp} = []")
                out(f"{pad}{fn}({var}, {self.ptr(ptr)}, {tmp})")
                out(f"{pad}if not {tmp}:")
                out(f"{pad}    {n_ok} += 1")
            cond = f"{n_ok} != 1" if keyword == "oneOf" else f"{n_ok} == 0"
            word = "exactly one" if keyword == "oneOf" else "at least one"
            out(f"{pad}if {cond}:")
            out(f"{pad}    _err(errs, {self.ptr(ptr)}, {('{field} must match ' + word + ' allowed form.')!r})")

    def emit_object(self, schema: dict, var: str, ptr: list[str], depth: int, strict: bool) -> None:
        pad = "    " * depth
        out = self.lines.append
        props: dict[str, dict] = schema.get("properties", {})
        additional = schema.get("additionalProperties", None if props else True)
        reject_unknown = additional is False or (additional is None and strict)

        # Properties whose schema is just {type, nullable} share one membership test (the hot path).
        simple: dict[tuple[tuple[str, ...], bool], list[str]] = {}
        complex_props: dict[str, dict] = {}
        for name, sub in props.items():
            keys = set(sub) - ANNOTATIONS
            if keys <= {"type", "nullable"} and "type" in sub and isinstance(sub["type"], str):
                simple.setdefault(((sub["type"],), bool(sub.get("nullable"))), []).append(name)
            else:
                complex_props[name] = sub

        key, val = self.fresh("k"), self.fresh("x")
        if props or reject_unknown or isinstance(additional, dict):
            out(f"{pad}for {key}, {val} in {var}.items():")
            inner = pad + "    "
            first = True
            member_ptr = [*ptr, "'/'", f"_esc({key})"]
            for (types, nullable), names in simple.items():
                kw = "if" if first else "elif"
                first = False
                cond = f"{key} in {self.const(frozenset(names))}" if len(names) > 1 else f"{key} == {names[0]!r}"
                check = " or ".join(TYPE_CHECKS[t].format(v=val) for t in types)
                if nullable:
                    check = f"{val} is None or {check}"
                out(f"{inner}{kw} {cond}:")
                out(f"{inner}    if not ({check}):")
                out(f"{inner}        _err_type(errs, {self.ptr(member_ptr)}, {_expected(types, nullable)!r}, {val})")
            for name, sub in complex_props.items():
                kw = "if" if first else "elif"
                first = False
                out(f"{inner}{kw} {key} == {name!r}:")
                start = len(self.lines)
                self.emit(sub, val, [*ptr, repr("/" + escape_token(name))], depth + 2, strict)
                if len(self.lines) == start:
                    out(f"{inner}    pass")
            if isinstance(additional, dict):
                out(f"{inner}{'else' if not first else 'if True'}:")
                self.emit(additional, val, member_ptr, depth + 2, strict)
            elif reject_unknown:
                detail = "{field} is not a valid field for this object."
                out(f"{inner}{'else' if not first else 'if True'}:")
                out(f"{inner}    _err(errs, {self.ptr(member_ptr)}, {detail!r})")
            elif first:
                out(f"{inner}pass")
        for name in schema.get("required", ()):
            out(f"{pad}if {name!r} not in {var}:")
            pointer = self.ptr([*ptr, repr("/" + escape_token(name))])
            out(f"{pad}    _err(errs, {pointer}, {'{field} is a required field.'!r})")


# ----------------------------------------------------------------------------------------------------------
# Columnar fast path for big arrays (10,000 profiles per request)
# ----------------------------------------------------------------------------------------------------------
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}
NoneType = type(None)


def _resolve(schemas: dict[str, dict], schema: dict) -> dict:
    """Follow a top-level $ref, keeping `nullable` from the referring schema."""
    if "$ref" in schema:
        target = schemas[schema["$ref"][len(REF_PREFIX) :]]
        if schema.get("nullable") and not target.get("nullable"):
            target = {**target, "nullable": True}
        return target
    return schema


class _Column:
    def __init__(self, name: str, schema: dict, schemas: dict[str, dict], depth: int):
        schema = _resolve(schemas, schema)
        keys = set(schema) - ANNOTATIONS
        self.name = name
        self.types: frozenset[type] | None = None
        self.enum: frozenset | None = None
        self.children: ColumnarCheck | None = None
        t = schema.get("type")
        if isinstance(t, str) and t in _PY_TYPES and keys <= {"type", "nullable", "enum"}:
            self.types = frozenset(_PY_TYPES[t] + ((NoneType,) if schema.get("nullable") else ()))
            self.enum = frozenset(schema["enum"]) if "enum" in schema else None
        elif t == "object" and "properties" in schema and depth < 1 and keys <= {"type", "properties", "required"}:
            self.types = frozenset({dict})
            self.children = ColumnarCheck(schema, schemas, depth + 1)

    @property
    def simple(self) -> bool:
        return self.types is not None


class ColumnarCheck:
    """A whole-array check derived from an object schema, done with C-level map/set operations.

    `columns(items)` returns {"name": [value per item], "attributes.email": [...], ...} when it can prove
    every item valid, and None when an item is invalid *or* uses a member this fast path does not cover
    (e.g. a nested `location`); the caller then runs the generated validator for exact errors. Only for
    arrays of objects whose members are simple (typed, nullable, enum) or one level of such objects.
    """

    def __init__(self, schema: dict, schemas: dict[str, dict], depth: int = 0):
        schema = _resolve(schemas, schema)
        self.required = tuple(schema.get("required", ()))
        self.members = {name: _Column(name, sub, schemas, depth) for name, sub in schema.get("properties", {}).items()}
        self.allowed = frozenset(self.members)

    def columns(self, items: list, prefix: str = "") -> dict[str, list] | None:
        if not items or set(map(type, items)) != {dict}:
            return None
        present = set().union(*items)
        if not present <= self.allowed:
            return None
        out: dict[str, list] = {}
        for name in present | set(self.required):
            col = self.members[name]
            if not col.simple:
                return None
            try:
                values = list(map(itemgetter(name), items))  # the common case: every item has the member
            except KeyError:
                if name in self.required:
                    return None
                values = list(map(methodcaller("get", name), items))
            # A missing optional member reads as None; where null is not allowed that needs the slow path.
            if not set(map(type, values)) <= col.types:
                return None
            if col.enum is not None and not set(values) <= col.enum:
                return None
            out[prefix + name] = values
            if col.children is not None:
                nested = col.children.columns(values, prefix + name + ".")
                if nested is None:
                    return None
                out.update(nested)
        return out


def replace_items(schemas: dict[str, dict], name: str, path: list[str], replacement: dict) -> dict:
    """A copy of schema `name` with the sub-schema at `path` replaced, following $refs on the way; path is
    a list like ["properties", "data", ..., "items"]. Used to validate an envelope without its items."""

    def walk(node: dict, rest: list[str]) -> dict:
        if not rest:
            return replacement
        node = _resolve(schemas, node)
        copy = dict(node)
        if rest[0] == "properties":
            prop = rest[1]
            copy["properties"] = {**node["properties"], prop: walk(node["properties"][prop], rest[2:])}
        else:
            copy[rest[0]] = walk(node[rest[0]], rest[1:])
        return copy

    return walk({"$ref": REF_PREFIX + name}, path)
