"""python -m localdev.klaviyo_emulator --port PORT --api-key KEY [options]: serve the emulator until stopped."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import pickle
import signal
import sys
from pathlib import Path

import uvicorn

from .app import EmulatorConfig, create_app
from .faults import KINDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localdev.klaviyo_emulator", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--api-key",
        action="append",
        required=True,
        help="private key the emulator accepts (repeat for several keys of the same account)",
    )
    p.add_argument("--rate-limits", choices=("klaviyo", "off"), default="klaviyo")
    p.add_argument("--job-latency", type=float, default=0.0, help="seconds from queued to complete (0 = at once)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="fraction of /api requests that get a fault")
    p.add_argument("--fault-seed", type=int, default=None)
    p.add_argument(
        "--fault-kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds for random faults (default: {','.join(KINDS)})",
    )
    p.add_argument("--fault-delay", type=float, default=1.0, help="seconds a random 'slow' fault waits")
    p.add_argument("--id-seed", type=int, default=None, help="make generated ids reproducible")
    p.add_argument(
        "--no-msgspec", action="store_true", help="parse bulk imports with orjson even if msgspec is installed"
    )
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--data",
        help="keep lists, profiles and jobs in this file: loaded at start if it exists, written when stopped",
    )
    args = p.parse_args(argv)
    if not 0.0 <= args.fault_rate <= 1.0:
        p.error("--fault-rate must be between 0 and 1")
    kinds = tuple(k for k in args.fault_kinds.split(",") if k)
    if not kinds or any(k not in KINDS for k in kinds):
        p.error(f"--fault-kinds must be among {','.join(KINDS)}")
    args.fault_kinds = kinds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = EmulatorConfig(
        api_keys=tuple(args.api_key),
        rate_limits=args.rate_limits == "klaviyo",
        job_latency=max(0.0, args.job_latency),
        fault_rate=args.fault_rate,
        fault_seed=args.fault_seed,
        fault_kinds=args.fault_kinds,
        fault_delay=args.fault_delay,
        id_seed=args.id_seed,
        msgspec=not args.no_msgspec,
    )
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    if args.data:
        load_data(app.emulator, Path(args.data))
    # The store holds millions of long-lived objects; collecting young objects less often keeps bulk
    # ingestion fast (nothing here builds reference cycles worth collecting early).
    gc.set_threshold(100_000, 50, 100)
    # uvicorn handles SIGINT/SIGTERM itself (stops accepting, finishes in-flight requests), then re-raises
    # the signal to the handler that was installed before it; a no-op one here makes the exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    if args.data:
        save_data(app.emulator, Path(args.data))
    return 0


def load_data(emulator, path: Path) -> None:
    """The store a previous run of the emulator wrote (a pickle it wrote itself, in the user's workdir)."""
    if path.exists():
        emulator.store = pickle.loads(path.read_bytes())  # our own file, written by save_data
        emulator.ids = emulator.store.ids


def save_data(emulator, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(emulator.store, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
