"""Klaviyo's `filter` query syntax: `equals(email,"a@x.com")`, `any(email,["a@x.com","b@x.com"])`,
`greater-than(created,2024-01-01T00:00:00Z)`, `and(...)`, `or(...)`, `not(...)`; a comma-separated list
at the top level means "and". Which fields and operators an endpoint allows comes from the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ApiError
from .store import parse_time

COMPARISONS = {
    "greater-than": lambda a, b: a > b,
    "greater-or-equal": lambda a, b: a >= b,
    "less-than": lambda a, b: a < b,
    "less-or-equal": lambda a, b: a <= b,
}
LEAF_OPS = {"equals", "any", "contains", *COMPARISONS}
MAX_ANY = 100
CASE_INSENSITIVE = {"email"}
TIME_FIELDS = {"created", "updated", "joined_group_at"}

Node = tuple


def _bad(detail: str) -> ApiError:
    return ApiError.bad_parameter("filter", detail)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, what: str) -> ApiError:
        return _bad(f"Invalid filter: {what} at position {self.pos} of '{self.text}'.")

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\n":
            self.pos += 1

    def peek(self) -> str:
        self.ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected '{ch}'")
        self.pos += 1

    def word(self) -> str:
        self.ws()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",()[] \t\n\"'":
            self.pos += 1
        return self.text[start : self.pos]

    def parse(self) -> Node:
        nodes = [self.expr()]
        while self.peek() == ",":
            self.pos += 1
            nodes.append(self.expr())
        if self.peek():
            raise self.error("unexpected text")
        return nodes[0] if len(nodes) == 1 else ("and", nodes)

    def expr(self) -> Node:
        name = self.word()
        if not name:
            raise self.error("expected an operator")
        self.expect("(")
        if name in ("and", "or"):
            args = [self.expr()]
            while self.peek() == ",":
                self.pos += 1
                args.append(self.expr())
            self.expect(")")
            return (name, args)
        if name == "not":
            inner = self.expr()
            self.expect(")")
            return ("not", inner)
        if name not in LEAF_OPS:
            raise _bad(f"Invalid filter: unknown operator '{name}'.")
        field = self.word()
        if not field:
            raise self.error("expected a field name")
        self.expect(",")
        value = self.value()
        self.expect(")")
        return (name, field, value)

    def value(self) -> Any:
        ch = self.peek()
        if ch in ("'", '"'):
            return self.string(ch)
        if ch == "[":
            self.pos += 1
            items = []
            if self.peek() == "]":
                self.pos += 1
                return items
            items.append(self.value())
            while self.peek() == ",":
                self.pos += 1
                items.append(self.value())
            self.expect("]")
            return items
        word = self.word()
        if not word:
            raise self.error("expected a value")
        if word in ("true", "false"):
            return word == "true"
        if word == "null":
            return None
        try:
            return int(word)
        except ValueError:
            pass
        try:
            return float(word)
        except ValueError:
            return word  # dates are written bare: 2024-01-01T00:00:00Z

    def string(self, quote: str) -> str:
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch == quote:
                self.pos += 1
                return "".join(out)
            out.append(ch)
            self.pos += 1
        raise self.error("unterminated string")


def parse_filter(text: str, allowed: dict[str, frozenset[str]]) -> Node:
    node = _Parser(text).parse()
    _check(node, allowed)
    return node


def _check(node: Node, allowed: dict[str, frozenset[str]]) -> None:
    kind = node[0]
    if kind in ("and", "or"):
        for sub in node[1]:
            _check(sub, allowed)
        return
    if kind == "not":
        _check(node[1], allowed)
        return
    op, field, value = node
    if field not in allowed:
        raise _bad(f"Invalid filter: '{field}' is not a filterable field here; allowed: {', '.join(sorted(allowed))}.")
    if op not in allowed[field]:
        ops = ", ".join(sorted(allowed[field]))
        raise _bad(f"Invalid filter: operator '{op}' is not allowed for '{field}'; allowed: {ops}.")
    if op == "any":
        if not isinstance(value, list):
            raise _bad(f"Invalid filter: any({field}, ...) takes a list of values.")
        if len(value) > MAX_ANY:
            raise _bad(f"Invalid filter: any() takes at most {MAX_ANY} values, got {len(value)}.")
    if op in COMPARISONS and field in TIME_FIELDS and parse_time(value) is None:
        raise _bad(f"Invalid filter: '{value}' is not a datetime.")


def _norm(field: str, value: Any) -> Any:
    if field in CASE_INSENSITIVE and isinstance(value, str):
        return value.strip().lower()
    return value


def evaluate(node: Node, get: Callable[[str], Any]) -> bool:
    kind = node[0]
    if kind == "and":
        return all(evaluate(sub, get) for sub in node[1])
    if kind == "or":
        return any(evaluate(sub, get) for sub in node[1])
    if kind == "not":
        return not evaluate(node[1], get)
    op, field, value = node
    actual = _norm(field, get(field))
    if op == "equals":
        return actual == _norm(field, value)
    if op == "any":
        return actual in {_norm(field, v) for v in value}
    if op == "contains":
        return isinstance(actual, str | list) and value in actual
    if field in TIME_FIELDS:
        value = parse_time(value)
    if actual is None or value is None:
        return False
    try:
        return COMPARISONS[op](actual, value)
    except TypeError:
        return False


def lookup_values(node: Node, field: str) -> set | None:
    """If the filter pins `field` to a finite set of values (equals/any, possibly inside and()), that set."""
    if node[0] == "and":
        for sub in node[1]:
            found = lookup_values(sub, field)
            if found is not None:
                return found
        return None
    if node[0] in ("equals", "any") and node[1] == field:
        values = node[2] if node[0] == "any" else [node[2]]
        return {_norm(field, v) for v in values}
    return None
