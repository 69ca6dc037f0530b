"""Helpers for end-to-end tests: run the command line, read a list back from the emulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from shared.klaviyo.client import KlaviyoClient
from tests.fixtures.services import EMULATOR_KEY

ROOT = Path(__file__).resolve().parent.parent


def new_list(url: str, name: str = "test") -> str:
    async def go():
        async with KlaviyoClient(EMULATOR_KEY, url) as client:
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
