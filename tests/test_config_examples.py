"""The configuration reference (docs/CONFIGURATION.md) and its examples (examples/): every field of an export
configuration and of a connection is documented, the examples use every field, parse through the real models,
and are accepted by the app's HTTP API where docs/OPERATIONS.md PUTs them."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import BaseModel

from localdev.host_client import HostClient
from shared.platform.config import Connection, ExportConfig
from tests.fixtures.services import EMULATOR_KEY
from tests.test_local_host import FUNCTION_KEY, host_settings, new_host

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXPORT_EXAMPLES = sorted((EXAMPLES / "exports").glob("*.json"))
CONNECTION_EXAMPLES = sorted((EXAMPLES / "connections").glob("*.json"))
REFERENCE = ROOT / "docs" / "CONFIGURATION.md"
# What PUT /api/connections/{name} takes besides the stored fields (shared/api.py): the key, checked against
# Klaviyo and written to Key Vault (never to a file: the examples leave it out), and the terms' acceptance.
CONNECTION_REQUEST_ONLY = {"api_key", "accept_privacy_terms"}


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def model_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field as a dotted name (``source.path_prefix``), nested models included."""
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        for inner in _models_in(field.annotation):
            out |= model_fields(inner, f"{prefix}{name}.")
    return out


def document_fields(doc: dict, nested: set[str], prefix: str = "") -> set[str]:
    """The dotted names a JSON document sets, going into the objects that are models (not field_mappings)."""
    out = set()
    for key, value in doc.items():
        out.add(prefix + key)
        if prefix + key in nested and isinstance(value, dict):
            out |= document_fields(value, nested, f"{prefix}{key}.")
    return out


def _nested(fields: set[str]) -> set[str]:
    return {f.rsplit(".", 1)[0] for f in fields if "." in f}


def only_keys_of(stored: dict, written: dict) -> dict:
    """``stored`` restricted to the keys ``written`` has, at every level."""
    return {k: only_keys_of(stored[k], v) if isinstance(v, dict) else stored[k] for k, v in written.items()}


def load(path: Path) -> dict:
    return orjson.loads(path.read_bytes())


def reference_section(title: str) -> str:
    text = REFERENCE.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}\b.*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert found, f"docs/CONFIGURATION.md has no section '## {title}'"
    return found.group(0)


# -- the reference -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "fields"),
    [
        ("Export configuration", model_fields(ExportConfig)),
        ("Connection", model_fields(Connection) | CONNECTION_REQUEST_ONLY),
    ],
)
def test_every_field_is_documented_in_the_configuration_reference(title, fields):
    section = reference_section(title)
    undocumented = sorted(f for f in fields if f"`{f}`" not in section)
    assert undocumented == [], f"document these fields in docs/CONFIGURATION.md, section '{title}'"


# -- the examples ----------------------------------------------------------------------------------------------


def test_there_is_an_export_example_per_mode_and_each_parses_through_the_model():
    modes = {}
    for path in EXPORT_EXAMPLES:
        cfg = ExportConfig.model_validate(load(path))
        modes[cfg.mode] = path.name
    assert modes == {"upsert": "upsert.json", "mirror": "mirror.json", "subscribe": "subscribe.json"}


def test_the_examples_use_every_field():
    fields = model_fields(ExportConfig)
    used = set().union(*(document_fields(load(p), _nested(fields)) for p in EXPORT_EXAMPLES))
    assert sorted(fields - used) == [], "add these fields to one of examples/exports/*.json"

    # A connection's privacy_acceptance is recorded by the API from accept_privacy_terms and the caller.
    fields = model_fields(Connection) - {f for f in model_fields(Connection) if f.startswith("privacy_acceptance")}
    fields |= {"accept_privacy_terms"}
    assert len(CONNECTION_EXAMPLES) == 1
    used = document_fields(load(CONNECTION_EXAMPLES[0]), set())
    assert sorted(fields - used) == [], "add these fields to examples/connections/*.json"
    assert "api_key" not in used  # keys never live in files


def test_operations_md_puts_every_example():
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    for path in [*CONNECTION_EXAMPLES, *EXPORT_EXAMPLES]:
        kind = path.parent.name
        name = load(path)["name"]
        relative = path.relative_to(ROOT).as_posix()
        put = re.compile(rf"-X PUT \S*/{kind}/{re.escape(name)}\b")
        lines = [line for line in operations.splitlines() if relative in line and put.search(line)]
        assert lines, f"OPERATIONS.md does not PUT {relative} at /api/{kind}/{name}"


def test_the_examples_are_accepted_by_the_api_and_stored_as_written(azurite, emulator_url):
    settings = host_settings(azurite, emulator_url)
    with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
        connection = load(CONNECTION_EXAMPLES[0])
        response = api.request(
            "PUT", f"/api/connections/{connection['name']}", json={**connection, "api_key": EMULATOR_KEY}
        )
        assert response.status_code == 200, response.text
        stored = response.json()
        assert {k: stored[k] for k in connection if k != "accept_privacy_terms"} == {
            k: v for k, v in connection.items() if k != "accept_privacy_terms"
        }
        assert stored["privacy_acceptance"]["accepted_by"] == "function key"

        for path in EXPORT_EXAMPLES:
            example = load(path)
            response = api.request("PUT", f"/api/exports/{example['name']}", json=example)
            assert response.status_code == 201, f"{path.name}: {response.text}"
            stored = httpx.get(host.url(f"/api/exports/{example['name']}"), params={"code": FUNCTION_KEY}).json()
            assert only_keys_of(stored, example) == example, path.name  # the defaults it adds aside
