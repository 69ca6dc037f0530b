"""Erasing one person: their email out of every export's sync state.

The sync state (`state/<connection>/<list id>/` in the workspace store: keys.bin, emails.txt in the same
order, meta.json) is where the app keeps who it put in which Klaviyo list. Taking an email out means the
app no longer counts that person as sent (a later run sends them again only if they are still in the
segment) and mirror mode no longer manages them. Klaviyo's own copy of the profile is Klaviyo's to erase.
"""

from __future__ import annotations

import numpy as np
import orjson

from shared.planning.plan import KEYS_DTYPE
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
    """Remove the emails from every sync state in `store`. Returns what was checked and, per state that
    held any of them, its connection, list, how many were removed and how many profiles are left."""
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
        removed = _erase_from_state(store, prefix, wanted_keys, by_key)
        if removed:
            found.update(removed)
            connection, _, list_id = prefix.removeprefix(STATE_PREFIX).rstrip("/").partition("/")
            left = orjson.loads(store.read_bytes(meta_name))["profiles"]
            changed.append(
                {"connection": connection, "list_id": list_id, "removed": len(removed), "profiles_left": left}
            )
    return {
        "emails": len(wanted),
        "emails_found": len(found),
        "states_checked": checked,
        "states_changed": changed,
        "found": sorted(found),
    }


def _erase_from_state(store: ObjectStore, prefix: str, wanted_keys: np.ndarray, by_key: dict[int, str]) -> list[str]:
    """Take the wanted emails out of one state; the emails it held (none: nothing is written)."""
    keys = np.frombuffer(store.read_bytes(f"{prefix}keys.bin"), KEYS_DTYPE)
    hits = np.flatnonzero(np.isin(keys["e"], wanted_keys))
    if not len(hits):
        return []
    lines = store.read_bytes(f"{prefix}emails.txt").split(b"\n")[:-1]
    if len(lines) != len(keys):
        raise ExportError(f"the sync state {prefix} is inconsistent: {len(keys)} keys, {len(lines)} emails")
    # A key is 64 bits of a hash: the email itself must match too before anything goes.
    drop = [int(i) for i in hits if lines[i].decode() == by_key[int(keys["e"][i])]]
    if not drop:
        return []
    keep = np.ones(len(keys), bool)
    keep[drop] = False
    removed = [lines[i].decode() for i in drop]
    meta = orjson.loads(store.read_bytes(f"{prefix}meta.json"))
    # Data first, then meta.json (as a run commits): the emails, then their keys in the same order.
    store.write_bytes(f"{prefix}emails.txt", b"".join(line + b"\n" for line, k in zip(lines, keep, strict=True) if k))
    store.write_bytes(f"{prefix}keys.bin", keys[keep].tobytes())
    store.write_bytes(f"{prefix}meta.json", orjson.dumps({**meta, "profiles": int(keep.sum())}))
    return removed
