"""Local durable host: runs Durable Functions orchestrations of a ``df.DFApp`` without the Functions host.

* :func:`registry_from_app` - the app's orchestrators, activities and durable-client functions.
* :class:`LocalDurableDriver` - replays orchestrators with the SDK's own engine, runs activities on a
  thread pool, fires durable timers, keeps the history in a :class:`HistoryStore`.
* :func:`durable_rpc_app` / :func:`client_binding_json` - the durable extension's HTTP API, so the SDK's
  ``DurableOrchestrationClient`` works unchanged against the driver.

Wiring for a local host::

    driver = LocalDurableDriver(app, LocalFolderHistoryStore(".durable"), clock_scale=1.0)
    driver.resume()                                  # carry on with instances a killed run left behind
    with serve_in_thread(durable_rpc_app(driver), port=7071) as base_url:
        binding = client_binding_json(base_url, "LocalHub")
        starter = registry_from_app(app).clients["my_starter"]
        await starter.fn(req=..., **{starter.parameter: binding})   # a durableClient function
"""

from localdev.durable.driver import (
    Clock,
    InstanceExistsError,
    InstanceNotFoundError,
    InstanceStatus,
    LocalDurableDriver,
    RuntimeStatus,
)
from localdev.durable.registry import DurableFunction, FunctionNotFoundError, Registry, registry_from_app
from localdev.durable.replay import NonDeterminismError, UnsupportedActionError
from localdev.durable.rpc import client_binding_json, durable_routes, durable_rpc_app, serve_in_thread
from localdev.durable.store import (
    BlobHistoryStore,
    HistoryStore,
    Lease,
    LeaseHeld,
    LocalFolderHistoryStore,
    MemoryHistoryStore,
)

__all__ = [
    "BlobHistoryStore",
    "Clock",
    "DurableFunction",
    "FunctionNotFoundError",
    "HistoryStore",
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InstanceStatus",
    "Lease",
    "LeaseHeld",
    "LocalDurableDriver",
    "LocalFolderHistoryStore",
    "MemoryHistoryStore",
    "NonDeterminismError",
    "Registry",
    "RuntimeStatus",
    "UnsupportedActionError",
    "client_binding_json",
    "durable_routes",
    "durable_rpc_app",
    "registry_from_app",
    "serve_in_thread",
]
