"""Housekeeping timers: a thin adapter over shared.finishing.purge."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from shared.finishing.purge import purge_finished_runs
from shared.platform.settings import get_settings

bp = df.Blueprint()


# Daily at 03:30 UTC: finished runs' durable history older than RUN_RETENTION_DAYS goes.
@bp.timer_trigger(arg_name="timer", schedule="0 30 3 * * *", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def purge_durable_history(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    await purge_finished_runs(client, get_settings().run_retention_days, df.OrchestrationRuntimeStatus)
