"""What ``python -m localdev host`` runs on: storage and Klaviyo, started by the host unless the settings say
otherwise, so a first start needs nothing set up by hand.

* **Storage.** ``LOCALDEV_STORAGE`` (or ``--storage``) is ``azurite`` by default: the host starts its own Azurite
  on free loopback ports (:func:`localdev.services.run_azurite`, as the demo and the tests do), keeping its data
  in a folder (``.localdev/azurite``), so configurations and unfinished runs survive a restart. It never attaches
  to an emulator it did not start: ``AzureWebJobsStorage=UseDevelopmentStorage=true`` in a ``local.settings.json``
  (as Core Tools wants it) is not used unless ``LOCALDEV_STORAGE=settings`` says so; then the host uses the
  storage the settings name and says which.
* **Klaviyo.** With ``KLAVIYO_BASE_URL`` set, that. Without it, the host starts the Klaviyo emulator with a key of
  its own (printed: PUT it as a connection's ``api_key``), so nothing reaches the real Klaviyo by default.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from localdev.host import HostError
from localdev.services import run_azurite, run_emulator

STORAGE_SETTING = "LOCALDEV_STORAGE"
STORAGE_CHOICES = ("azurite", "settings")
STORAGE_KEYS = ("AzureWebJobsStorage", "SEGMENTS_STORAGE")
DEFAULT_AZURITE_DIR = Path(".localdev") / "azurite"


@dataclass
class LocalServices:
    """``settings``: what the host must use over its other settings; ``notes``: one line per service, saying
    which one is used and why (printed at start)."""

    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    azurite_started: bool = False
    emulator_started: bool = False


def blob_endpoint(connection_string: str) -> str:
    """The blob endpoint a connection string names (never its key)."""
    from azure.storage.blob import BlobServiceClient

    try:
        return BlobServiceClient.from_connection_string(connection_string).url.rstrip("/")
    except ValueError:
        return "(a connection string that cannot be read)"


def start_local_services(
    stack: ExitStack,
    values: Mapping[str, str],
    storage: str | None = None,
    azurite_dir: Path = DEFAULT_AZURITE_DIR,
) -> LocalServices:
    """Start what ``values`` (the host's settings: local.settings.json under the environment) do not provide;
    everything started is stopped when ``stack`` closes."""
    mode = (storage or values.get(STORAGE_SETTING) or "azurite").strip().lower()
    if mode not in STORAGE_CHOICES:
        raise HostError(f"{STORAGE_SETTING} must be one of {', '.join(STORAGE_CHOICES)} (is {mode!r})")
    out = LocalServices()
    if mode == "azurite":
        azurite_dir.mkdir(parents=True, exist_ok=True)
        _lock(stack, azurite_dir)
        try:
            azurite = stack.enter_context(run_azurite(azurite_dir, in_memory=False))
        except RuntimeError as exc:
            raise HostError(f"cannot start Azurite: {exc}") from None
        out.azurite_started = True
        out.settings.update(dict.fromkeys(STORAGE_KEYS, azurite.connection_string))
        out.settings[STORAGE_SETTING] = mode
        note = (
            f"Storage: Azurite started by this host, blob endpoint {blob_endpoint(azurite.connection_string)}, "
            f"data in {azurite_dir}"
        )
        ignored = [key for key in STORAGE_KEYS if values.get(key)]
        if ignored:
            note += f" ({' and '.join(ignored)} from the settings not used: {STORAGE_SETTING}=settings uses them)"
        out.notes.append(note)
    else:
        missing = [key for key in STORAGE_KEYS if not values.get(key)]
        if missing:
            raise HostError(f"{STORAGE_SETTING}=settings but {' and '.join(missing)} not set in the settings")
        used = ", ".join(f"{key} {blob_endpoint(values[key])}" for key in STORAGE_KEYS)
        out.notes.append(f"Storage: as the settings say ({STORAGE_SETTING}=settings): {used}")

    if values.get("KLAVIYO_BASE_URL"):
        out.notes.append(f"Klaviyo: {values['KLAVIYO_BASE_URL']} (KLAVIYO_BASE_URL)")
    else:
        key = "pk_local_emulator_" + secrets.token_hex(8)  # the emulator's own key, not a Klaviyo one
        try:
            url = stack.enter_context(run_emulator(key))
        except RuntimeError as exc:
            raise HostError(f"cannot start the Klaviyo emulator: {exc}") from None
        out.emulator_started = True
        # KEY_VAULT_URL off: a key PUT with a connection stays in this process, never in a real vault.
        out.settings.update({"KLAVIYO_BASE_URL": url, "KLAVIYO_API_KEY": key, "KEY_VAULT_URL": ""})
        out.notes.append(
            f"Klaviyo: the emulator at {url} (KLAVIYO_BASE_URL is not set), API key {key} "
            "(PUT it as a connection's api_key)"
        )
    return out


def _lock(stack: ExitStack, folder: Path) -> None:
    """One Azurite per data folder: two would corrupt each other's files. Held until ``stack`` closes (after the
    Azurite started on the folder has stopped); the OS releases it when the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; the docs say to use one folder per host
        return
    handle = stack.enter_context(open(folder / ".localdev-host.lock", "a"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HostError(
            f"another local host keeps its Azurite data in {folder}: stop it, or give this one --azurite-dir"
        ) from None
