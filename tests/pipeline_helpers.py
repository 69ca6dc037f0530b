"""Helpers for end-to-end tests: run the command line, read a list back from the emulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from shared.pushing.klaviyo.client import KlaviyoClient
from tests.fixtures.services import EMULATOR_KEY

ROOT = Path(__file__).resolve().parent.parent


def new_list(url: str, name: str = "test", key: str = EMULATOR_KEY) -> str:
    async def go():
        async with KlaviyoClient(key, url) as client:
            return await client.create_list(name)

    return asyncio.run(go())


def list_emails(url: str, list_id: str) -> set[str]:
    async def go():
        async with KlaviyoClient(EMULATOR_KEY, url) as client:
            return {m["email"] async for m in client.iter_list_members(list_id, fields=("email",))}

    return asyncio.run(go())


def run_cli(tmp: Path, source: str | Path, list_id: str, url: str, *extra: str, key: str = EMULATOR_KEY):
    """python -m localdev export ... as a user runs it; returns (exit code, report or None, stderr)."""
    report = tmp / f"report-{len(list(tmp.glob('report-*')))}.json"
    cmd = [
        sys.executable, "-m", "localdev", "export", str(source),
        "--list-id", list_id, "--email-field", "Email", "--klaviyo-url", url,
        "--workdir", str(tmp / "work"), "--state", str(tmp / "state"), "--report", str(report), *extra,
    ]  # fmt: skip
    env = {**os.environ, "KLAVIYO_API_KEY": key}
    env.pop("KEY_VAULT_URL", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    body = orjson.loads(report.read_bytes()) if report.exists() else None
    return proc.returncode, body, proc.stderr


def consent_by_email(url: str, emails: list[str]) -> dict[str, dict]:
    """Email marketing consent (SUBSCRIBED / NEVER_SUBSCRIBED and its timestamp) as Klaviyo records it."""
    import httpx

    headers = {"Authorization": f"Klaviyo-API-Key {EMULATOR_KEY}", "revision": "2026-07-15"}
    out = {}
    for i in range(0, len(emails), 100):
        chunk = emails[i : i + 100]
        params = {
            "filter": f"any(email,{orjson.dumps(chunk).decode()})",
            "additional-fields[profile]": "subscriptions",
            "page[size]": 100,
        }
        doc = httpx.get(f"{url}/api/profiles", params=params, headers=headers).json()
        for p in doc["data"]:
            out[p["attributes"]["email"]] = p["attributes"]["subscriptions"]["email"]["marketing"]
    return out


def add_outsider(url: str, list_id: str, email: str) -> None:
    """Someone added to the list by another tool: mirror mode must never touch them."""
    from shared.pushing.klaviyo.batching import ImportBatch, serialize_profile

    async def go():
        async with KlaviyoClient(EMULATOR_KEY, url) as client:
            batch = ImportBatch.of([("outsider", serialize_profile({"email": email}))])
            result = await client.submit_import_job(batch, list_id)
            assert result.job_id

    asyncio.run(go())
