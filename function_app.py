"""The Functions app (v2 programming model): registers the blueprints in functions/; nothing else."""

import azure.durable_functions as df
import azure.functions as func

from functions import activities, blob_trigger, http_api, maintenance, orchestrator

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (orchestrator.bp, activities.bp, blob_trigger.bp, http_api.bp, maintenance.bp):
    app.register_functions(blueprint)
