"""Erasing one person: their email out of every export's sync state.

The sync state (`state/<connection>/<list id>/` in the workspace store: keys.bin, emails.txt in the same
order, meta.json) is where the app keeps who it put in which Klaviyo list. Taking an email out means the
app no longer counts that person as sent (a later run sends them again only if they are still in the
segment) and mirror mode no longer manages them. Klaviyo's own copy of the profile is Klaviyo's to erase.
"""

from __future__ import annotations

import numpy as np
import orjson

from shared.finishing import statefiles
from shared.planning.profiles import email_key, email_ok
from shared.platform.errors import ExportError
from shared.platform.storage import ObjectStore

STATE_PREFIX = "state/"
MAX_EMAILS = 1_000  # one request; more people: more requests


class ErasureError(ExportError):
    """The request itself is wrong (no email, not an email address, too many)."""


def normalise(emails: list[str]) -> list[str]:
    """The emails as the plan keys them (trimmed, lower-cased), each checked; one-line errors otherwise."""
    if not emails:
        raise ErasureError("give at least one email address to erase")
    if len(emails) > MAX_EMAILS:
        raise ErasureError(f"at most {MAX_EMAILS} email addresses at a time, not {len(emails)}")
    out = []
    for i, raw in enumerate(emails, 1):
        email = raw.strip().lower() if isinstance(raw, str) else ""
        if not email_ok(email):
            raise ErasureError(f"email {i} is not an email address")  # no echo: it may be personal data
        out.append(email)
    return list(dict.fromkeys(out))


def erase_emails(store: ObjectStore, emails: list[str]) -> dict:
    """Remove the emails from every sync state in `store` (streamed: flat memory whatever the state's size).
    Returns what was checked and, per state that held any of them, its connection, list, how many were
    removed and how many profiles are left. An email is found by its key, as runs match them."""
    wanted = normalise(emails)
    by_key = {email_key(e): e for e in wanted}
    wanted_keys = np.fromiter(by_key, np.uint64, len(by_key))
    checked, changed = 0, []
    found: set[str] = set()
    for meta_name in store.list(STATE_PREFIX):
        if not meta_name.endswith("/meta.json"):
            continue
        prefix = meta_name.removesuffix("meta.json")
        checked += 1
        rows, keys = statefiles.rows_with_keys(store, f"{prefix}keys.bin", wanted_keys)
        if not len(rows):
            continue
        meta = orjson.loads(store.read_bytes(meta_name))
        left = statefiles.copy_without(store, prefix, store, prefix, rows)
        store.write_bytes(meta_name, orjson.dumps({**meta, "profiles": left}))  # last, as a run commits
        found.update(by_key[int(k)] for k in keys)
        connection, _, list_id = prefix.removeprefix(STATE_PREFIX).rstrip("/").partition("/")
        changed.append({"connection": connection, "list_id": list_id, "removed": len(rows), "profiles_left": left})
    return {
        "emails": len(wanted),
        "emails_found": len(found),
        "states_checked": checked,
        "states_changed": changed,
        "found": sorted(found),
    }
