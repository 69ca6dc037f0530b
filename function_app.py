"""The Functions app (v2 programming model): registers the blueprints in functions/, says which fast path runs, and
keeps the Azure SDK's per-request log records out of Application Insights."""

import logging

import azure.durable_functions as df
import azure.functions as func

from functions import activities, blob_trigger, http_api, maintenance, orchestrator
from shared.api import startup_line
from shared.platform.runtime import quiet_sdk_loggers

quiet_sdk_loggers()
app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (orchestrator.bp, activities.bp, blob_trigger.bp, http_api.bp, maintenance.bp):
    app.register_functions(blueprint)
logging.getLogger("function_app").info(startup_line())
