"""`python -m localdev erase EMAIL ...`: the emails out of every export's sync state, in a local folder or
in the app's workspace container in Azure (what `POST /api/erasure` does, for operators at a shell)."""

from __future__ import annotations

import os
import sys

from shared.finishing.erasure import erase_emails
from shared.platform.storage import BlobStore, LocalStore, ObjectStore, split_blob_url


def state_store(location: str) -> ObjectStore:
    """A folder, or a container URL: AZURE_STORAGE_CONNECTION_STRING when set (Azurite, a key), otherwise
    DefaultAzureCredential (`az login`; needs Storage Blob Data Contributor on the container)."""
    if not location.startswith(("http://", "https://")):
        return LocalStore(location)
    account_url, container, _ = split_blob_url(location)
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        return BlobStore.from_connection_string(conn, container)
    return BlobStore.from_account_url(account_url, container)


def erase(emails: list[str], location: str) -> int:
    result = erase_emails(state_store(location), emails)
    if not result["states_checked"]:  # a mistyped --state must not look like a successful erasure
        print(f"error: no sync state found in {location} (is --state right?)", file=sys.stderr)
        return 1
    for state in result["states_changed"]:
        print(
            f"removed {state['removed']} from connection '{state['connection']}', list '{state['list_id']}' "
            f"({state['profiles_left']:,} profiles left)"
        )
    missing = result["emails"] - result["emails_found"]
    print(
        f"{result['emails_found']} of {result['emails']} email(s) found in {len(result['states_changed'])} of "
        f"{result['states_checked']} sync state(s)" + (f"; {missing} in none" if missing else "")
    )
    return 0
