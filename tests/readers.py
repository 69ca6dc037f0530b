"""Helpers for tests that make their own exports and read back what a plan would send."""

from __future__ import annotations

import orjson

from shared.planning.plan import PlanOptions, plan_export
from shared.planning.profiles import ProfileMapper
from shared.planning.units import PlanReader
from shared.platform.storage import ObjectStore
from shared.reading.source import ExportSource


def write_cdm(
    store: ObjectStore,
    columns: list[str],
    partitions: dict[str, bytes],
    *,
    root: str = "CustomerInsights_x/dest",
    entity: str = "Seg",
    settings: dict | None = None,
    account: str = "https://ciaccount.blob.core.windows.net/exports",
    extra_entities: list[dict] | None = None,
) -> str:
    """Write partitions (name -> raw bytes) and a model.json naming them, as Customer Insights does."""
    parts = []
    for name, data in partitions.items():
        path = f"{root}/{entity}/2026/11/29/0600/{name}"
        store.write_bytes(path, data)
        part = {"name": name, "location": f"{account}/{path}"}
        if settings is not None:
            part["fileFormatSettings"] = settings
        parts.append(part)
    model = {
        "name": "dest",
        "version": "1.0",
        "entities": [
            {"$type": "LocalEntity", "name": entity, "attributes": [{"name": c} for c in columns], "partitions": parts},
            *(extra_entities or []),
        ],
    }
    store.write_bytes(f"{root}/model.json", orjson.dumps(model))
    return f"{root}/model.json"


def plan_and_read(source: ExportSource, email_field: str, workspace: ObjectStore, mappings=None, **options):
    """Plan, then read back every unit as a push activity would: (summary, [(locator, email, row)])."""
    mapper = ProfileMapper(source.columns, email_field, mappings or {})
    summary = plan_export(source, mapper, workspace, "run/", PlanOptions(**options))
    reader = PlanReader(workspace, "run/")
    sent = [
        ("{partition}:{row}".format(**reader.where(loc)), email, row)
        for unit in summary["units"]
        for loc, row, email in reader.iter_unit(source.store, unit)
    ]
    return summary, sent


def rejects(workspace: ObjectStore) -> list[dict]:
    return [orjson.loads(line) for line in workspace.read_bytes("run/rejects.ndjson").splitlines()]
