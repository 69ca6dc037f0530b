"""Start local services (Azurite, the Klaviyo emulator) as child processes on loopback.

Used by the demo, the command line and the test fixtures, so all three start them the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCALDEV = Path(__file__).resolve().parent
AZURITE_BIN = LOCALDEV / "node_modules" / ".bin" / "azurite"

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 30.0, what: str = "service") -> None:
    """Poll until something accepts connections on the port (or the process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet; not covering a race
    raise RuntimeError(f"{what} did not open port {port} within {timeout_s:.0f} s")


@dataclass(frozen=True)
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        host = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={host}:{self.blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint={host}:{self.queue_port}/{AZURITE_ACCOUNT};"
            f"TableEndpoint={host}:{self.table_port}/{AZURITE_ACCOUNT};"
        )


@contextmanager
def run_azurite(location: Path | None = None, in_memory: bool = True) -> Iterator[Azurite]:
    """Run Azurite (npm package, installed under localdev/node_modules) on free loopback ports."""
    if not AZURITE_BIN.exists():
        raise RuntimeError("Azurite is not installed: run `make setup` (npm ci --prefix localdev)")
    ports = Azurite(free_port(), free_port(), free_port())
    with tempfile.TemporaryDirectory(prefix="azurite-") as tmp:
        args = [
            str(AZURITE_BIN),
            "--blobHost", "127.0.0.1", "--blobPort", str(ports.blob_port),
            "--queueHost", "127.0.0.1", "--queuePort", str(ports.queue_port),
            "--tableHost", "127.0.0.1", "--tablePort", str(ports.table_port),
            "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent",
        ]  # fmt: skip
        # Azurite refuses --location together with --inMemoryPersistence.
        args += ["--inMemoryPersistence"] if in_memory else ["--location", str(location or tmp)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            for port in (ports.blob_port, ports.queue_port, ports.table_port):
                wait_for_port(port, proc, what="Azurite")
            yield ports
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def run_emulator(api_key: str, *extra_args: str) -> Iterator[str]:
    """Run the Klaviyo emulator in a child process; yields its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "localdev.klaviyo_emulator", "--port", str(port), "--api-key", api_key]
    proc = subprocess.Popen(
        [*args, *extra_args],
        cwd=LOCALDEV.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, what="Klaviyo emulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)  # with --data it writes its store on the way out (a few s per million profiles)
        except subprocess.TimeoutExpired:
            proc.kill()
