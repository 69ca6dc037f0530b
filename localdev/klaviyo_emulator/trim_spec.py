"""Cut Klaviyo's published OpenAPI spec down to what the emulator serves, and write openapi-trimmed.json.

The full spec is 3 MB and lives outside the repository (a developer's machine has no /work/shared), so the
emulator carries this trimmed copy: the operations below, every schema they reference (transitively) and
the shared error responses. Nothing is rewritten except that long descriptions and examples are dropped
from schemas; parameter descriptions are kept because they state page-size bounds and allowed filters.

Run it again when the project moves to a newer spec revision:

    python -m localdev.klaviyo_emulator.trim_spec /path/to/openapi-stable-YYYY-MM-DD.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/work/shared/pushing/klaviyo/openapi-stable-2026-07-15.json")
DEFAULT_TARGET = HERE / "openapi-trimmed.json"

# (path, method): every operation the emulator implements.
OPERATIONS: list[tuple[str, str]] = [
    ("/api/accounts", "get"),
    ("/api/lists", "get"),
    ("/api/lists", "post"),
    ("/api/lists/{id}", "get"),
    ("/api/lists/{id}/profiles", "get"),
    ("/api/lists/{id}/relationships/profiles", "get"),
    ("/api/lists/{id}/relationships/profiles", "post"),
    ("/api/lists/{id}/relationships/profiles", "delete"),
    ("/api/profiles", "get"),
    ("/api/profile-bulk-import-jobs", "get"),
    ("/api/profile-bulk-import-jobs", "post"),
    ("/api/profile-bulk-import-jobs/{job_id}", "get"),
    ("/api/profile-bulk-import-jobs/{id}/import-errors", "get"),
    ("/api/profile-bulk-import-jobs/{id}/profiles", "get"),
    ("/api/profile-bulk-import-jobs/{id}/relationships/profiles", "get"),
    ("/api/profile-bulk-import-jobs/{id}/lists", "get"),
    ("/api/profile-bulk-import-jobs/{id}/relationships/lists", "get"),
    ("/api/profile-subscription-bulk-create-jobs", "post"),
]

OPERATION_KEYS = (
    "operationId",
    "summary",
    "parameters",
    "requestBody",
    "responses",
    "x-klaviyo-ratelimit",
    "x-klaviyo-scopes",
)
SCHEMA_DROP = ("description", "example", "examples")
REF = re.compile(r'"#/components/(schemas|responses)/([^"]+)"')


def _strip(node):
    """Drop descriptions/examples from schema objects (not from property names that happen to match)."""
    if isinstance(node, list):
        return [_strip(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in SCHEMA_DROP:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _strip(sub) for name, sub in value.items()}
        else:
            out[key] = _strip(value)
    return out


def trim(spec: dict, source_name: str, source_sha256: str) -> dict:
    paths: dict[str, dict] = {}
    for path, method in OPERATIONS:
        op = spec["paths"][path][method]
        kept = {k: op[k] for k in OPERATION_KEYS if k in op}
        for param in kept.get("parameters", []):
            param.pop("example", None)
        paths.setdefault(path, {})[method] = kept

    components: dict[str, dict] = {"schemas": {}, "responses": {}}
    pending = REF.findall(json.dumps(paths))
    while pending:
        kind, name = pending.pop()
        if name in components[kind]:
            continue
        node = spec["components"][kind][name]
        components[kind][name] = _strip(node) if kind == "schemas" else node
        pending.extend(REF.findall(json.dumps(node)))

    return {
        "openapi": spec["openapi"],
        "info": {
            "title": spec["info"]["title"] + " (trimmed for the local emulator)",
            "version": spec["info"]["version"],
        },
        "x-trimmed-from": {
            "file": source_name,
            "revision": spec["info"]["version"],
            "sha256": source_sha256,
            "generator": "localdev/klaviyo_emulator/trim_spec.py",
        },
        "servers": spec.get("servers", []),
        "security": spec.get("security", []),
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components["schemas"].items())),
            "responses": dict(sorted(components["responses"].items())),
            "securitySchemes": spec["components"].get("securitySchemes", {}),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_TARGET)
    args = parser.parse_args(argv)

    raw = args.source.read_bytes()
    spec = json.loads(raw)
    trimmed = trim(spec, args.source.name, hashlib.sha256(raw).hexdigest())
    args.output.write_text(json.dumps(trimmed, indent=1, sort_keys=False, ensure_ascii=False) + "\n")
    print(
        f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB): revision {trimmed['info']['version']}, "
        f"{sum(len(m) for m in trimmed['paths'].values())} operations, "
        f"{len(trimmed['components']['schemas'])} schemas",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
