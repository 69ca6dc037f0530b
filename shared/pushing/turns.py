"""One run at a time per export, and the later export wins.

Two model.json writes in quick succession start two runs. The first to take the export's turn (an
exclusive create of `locks/<export>.json` in the workspace store) runs; the other waits on durable timers.
When a run ends it records the write time of the source it ran (`locks/<export>.last.json`), and a waiting
run whose source is older than that is superseded: it sends nothing, so an older export can never undo a
newer one. A turn held by a run that died without finishing is taken over after LOCK_STALE_S.
"""

from __future__ import annotations

import time

import orjson

from shared.platform.errors import SourceError
from shared.platform.storage import ObjectStore

LOCK_STALE_S = 6 * 3600


def _names(export: str) -> tuple[str, str]:
    return f"locks/{export}.json", f"locks/{export}.last.json"


def take_turn(store: ObjectStore, export: str, run_id: str, source_time: float, now: float | None = None) -> dict:
    """{"status": "granted"} | {"status": "wait", "holder": run id} |
    {"status": "superseded", "by": run id, "by_source_time": the write time of the source that run ran}."""
    now = time.time() if now is None else now
    lock, last = _names(export)
    if store.exists(last):
        done = orjson.loads(store.read_bytes(last))
        if source_time < done["source_time"] and done["run_id"] != run_id:
            return {"status": "superseded", "by": done["run_id"], "by_source_time": done["source_time"]}
    body = orjson.dumps({"run_id": run_id, "source_time": source_time, "at": now})
    for _ in range(2):  # a turn released between our create and our read: try once more
        if store.create(lock, body):
            return {"status": "granted"}
        try:
            etag = store.info(lock).etag
            holder = orjson.loads(store.read_bytes(lock))
        except SourceError:
            continue
        if holder["run_id"] == run_id:  # this run's own turn (the activity was retried)
            return {"status": "granted"}
        if now - holder["at"] > LOCK_STALE_S and store.delete_if_unchanged(lock, etag):
            continue
        return {"status": "wait", "holder": holder["run_id"]}
    return {"status": "wait", "holder": "unknown"}


def end_turn(store: ObjectStore, export: str, run_id: str, source_time: float, ran: bool) -> None:
    """Release the turn if this run holds it; when the run went through (not failed), record its source's
    write time so that older sources still waiting are superseded."""
    lock, last = _names(export)
    if ran:
        done = orjson.loads(store.read_bytes(last)) if store.exists(last) else None
        if done is None or source_time >= done["source_time"]:
            store.write_bytes(last, orjson.dumps({"run_id": run_id, "source_time": source_time}))
    try:
        etag = store.info(lock).etag
        holder = orjson.loads(store.read_bytes(lock))
    except SourceError:
        return
    if holder["run_id"] == run_id:
        store.delete_if_unchanged(lock, etag)
