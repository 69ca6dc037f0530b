"""Durable functions of a ``df.DFApp``, called the way the Python worker calls them.

* Orchestrators registered with ``DFApp.orchestration_trigger`` are already wrapped by
  ``Orchestrator.create``: the worker passes an ``azure.functions.OrchestrationContext`` whose ``.body``
  is the orchestration JSON (history, input, instance id, ...) and sends back the returned string, the
  ``OrchestratorState`` JSON.
* Activities get their input JSON-decoded like the worker's ``ActivityTriggerConverter`` does
  (``df_loads``, falling back to the raw string when it is not JSON), and their return value is encoded
  with ``df_dumps``. Sync and ``async def`` activities both work.
* Functions with a ``durableClient`` input binding are listed too (``client`` kind), with the parameter
  that receives the client binding JSON (see ``rpc.client_binding_json``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import azure.functions as func
from azure.functions import _durable_functions as func_durable

Kind = Literal["orchestrator", "activity", "entity", "client"]

_TRIGGER_KINDS: dict[str, Kind] = {
    "orchestrationTrigger": "orchestrator",
    "activityTrigger": "activity",
    "entityTrigger": "entity",
}


class FunctionNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class DurableFunction:
    name: str
    kind: Kind
    fn: Callable[..., Any]
    parameter: str  # the trigger's parameter name, or for "client" the durableClient parameter
    bindings: tuple[dict[str, Any], ...]
    trigger_type: str | None = None  # for "client" functions: the type of their trigger (httpTrigger, ...)


@dataclass(frozen=True)
class ActivityContext:
    """Stands in for ``func.Context`` when an activity declares a ``context`` parameter."""

    invocation_id: str
    function_name: str
    function_directory: str = ""


def _binding_dict(binding: Any) -> dict[str, Any]:
    raw = binding.get_dict_repr()
    return json.loads(json.dumps(raw, default=lambda v: getattr(v, "value", str(v))))


class Registry:
    """Name -> durable function. Activities and orchestrators are also reachable under the name given in
    their trigger (``activity=`` / ``orchestration=``) when that differs from the function name."""

    def __init__(self, functions: list[DurableFunction], aliases: dict[str, str] | None = None):
        self.functions: dict[str, DurableFunction] = {f.name: f for f in functions}
        self._aliases = aliases or {}

    def get(self, name: str) -> DurableFunction | None:
        return self.functions.get(name) or self.functions.get(self._aliases.get(name, ""))

    def _of_kind(self, kind: Kind) -> dict[str, DurableFunction]:
        return {n: f for n, f in self.functions.items() if f.kind == kind}

    @property
    def orchestrators(self) -> dict[str, DurableFunction]:
        return self._of_kind("orchestrator")

    @property
    def activities(self) -> dict[str, DurableFunction]:
        return self._of_kind("activity")

    @property
    def clients(self) -> dict[str, DurableFunction]:
        return self._of_kind("client")

    def orchestrator(self, name: str) -> DurableFunction:
        found = self.get(name)
        if found is None or found.kind != "orchestrator":
            raise FunctionNotFoundError(f"The function '{name}' doesn't exist or is not an orchestrator function.")
        return found

    def activity(self, name: str) -> DurableFunction:
        found = self.get(name)
        if found is None or found.kind != "activity":
            raise FunctionNotFoundError(f"The function '{name}' doesn't exist or is not an activity function.")
        return found

    # -- calling -------------------------------------------------------------------------------------
    def call_orchestrator(self, name: str, body: str) -> str:
        """One orchestrator episode: the worker's call. Returns the OrchestratorState JSON; an exception from
        the orchestrator propagates (its message carries the state after ``$OutOfProcData$:``)."""
        function = self.orchestrator(name)
        result = function.fn(func.OrchestrationContext(body))
        if not isinstance(result, str):  # the SDK always returns a string; be explicit if not
            raise TypeError(f"orchestrator {name!r} returned {type(result).__name__}, expected the state JSON")
        return result

    def call_activity(self, name: str, input_json: str | None) -> str:
        """Run an activity: decode the input like ``ActivityTriggerConverter``, encode the result as JSON."""
        function = self.activity(name)
        value = decode_activity_input(input_json)
        kwargs: dict[str, Any] = {function.parameter: value}
        try:
            parameters = inspect.signature(function.fn).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            parameters = {}
        if "context" in parameters and function.parameter != "context":
            kwargs["context"] = ActivityContext(str(uuid.uuid4()), function.name)
        result = function.fn(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return func_durable.df_dumps(result)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def decode_activity_input(input_json: str | None) -> Any:
    if input_json is None:
        return None
    try:
        return func_durable.df_loads(input_json)
    except json.JSONDecodeError:
        return input_json


def _app_functions(app: Any) -> list[Any]:
    """``app.get_functions()``, callable more than once: the SDK records the names it has seen in
    ``functions_bindings`` to reject duplicates, so a second call (ours after the host's indexing, or the
    other way round) would fail. The duplicate check still runs, on a clean slate, and the slate is put back."""
    seen = getattr(app, "functions_bindings", None)
    app.functions_bindings = None
    try:
        return app.get_functions()
    finally:
        app.functions_bindings = seen


def registry_from_app(app: Any) -> Registry:
    """Read ``app.get_functions()`` and the bindings of each into a :class:`Registry`."""
    functions: list[DurableFunction] = []
    aliases: dict[str, str] = {}
    for function in _app_functions(app):
        bindings = tuple(_binding_dict(b) for b in function.get_bindings())
        name = function.get_function_name()
        trigger = next((b for b in bindings if b.get("type", "").endswith("Trigger")), None)
        trigger_type = trigger.get("type") if trigger else None
        kind = _TRIGGER_KINDS.get(trigger_type or "")
        if kind is not None and trigger is not None:
            functions.append(
                DurableFunction(name, kind, function.get_user_function(), trigger["name"], bindings, trigger_type)
            )
            alias = trigger.get("activity") or trigger.get("orchestration") or trigger.get("entityName")
            if alias and alias != name:
                aliases[alias] = name
            continue
        client = next((b for b in bindings if b.get("type") == "durableClient"), None)
        if client is not None:
            functions.append(
                DurableFunction(name, "client", function.get_user_function(), client["name"], bindings, trigger_type)
            )
    return Registry(functions, aliases)
