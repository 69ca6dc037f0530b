"""What the run record's way to Application Insights costs a cold worker: plain logging (what the app does)
against the azure-monitor-opentelemetry distro (imported and configured, as a worker would at start).

The distro is not one of the app's dependencies, so it is measured in a virtualenv of its own:

    python3 -m venv /tmp/otel && /tmp/otel/bin/pip install azure-monitor-opentelemetry azure-functions
    .venv/bin/python -m bench.bench_telemetry_choice /tmp/otel/bin/python

Each way runs in a fresh interpreter 3 times; the median time and peak RSS are printed (results:
bench/RESULTS.md).
"""

from __future__ import annotations

import statistics
import subprocess
import sys

MEASURE = """
import os, resource, time
import azure.functions, logging
t = time.perf_counter()
{setup}
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
os._exit(0)  # no exporter flush at exit: only the start is measured
"""
WAYS = {
    "logging": "logging.getLogger('ci_klaviyo_sync.runs').warning('run_finished {}')",
    "azure-monitor-opentelemetry": (
        "from azure.monitor.opentelemetry import configure_azure_monitor\n"
        "configure_azure_monitor(connection_string='InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/', disable_offline_storage=True)"
    ),
}


def main(python: str) -> None:
    for name, setup in WAYS.items():
        runs = []
        for _ in range(3):
            out = subprocess.run(
                [python, "-c", MEASURE.format(setup=setup)], capture_output=True, text=True, check=True
            ).stdout.split()
            runs.append((float(out[0]), float(out[1])))
        seconds = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        print(f"{name:30s} start {seconds:5.2f} s   peak RSS {rss:5.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else sys.executable)
