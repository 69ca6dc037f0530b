"""Activity bindings: each a thin call into shared.pipeline."""

from __future__ import annotations

import azure.durable_functions as df

from shared import pipeline

bp = df.Blueprint()


@bp.activity_trigger(input_name="run", activity="take_turn")
def take_turn(run: dict) -> dict:
    return pipeline.take_turn(run)


@bp.activity_trigger(input_name="run", activity="plan_export")
def plan_export(run: dict) -> dict:
    return pipeline.plan(run)


@bp.activity_trigger(input_name="payload", activity="push_unit")
def push_unit(payload: dict) -> dict:
    return pipeline.push(payload["run"], payload["index"], payload["unit"])


@bp.activity_trigger(input_name="payload", activity="check_jobs")
def check_jobs(payload: dict) -> list[dict]:
    return pipeline.check_jobs(payload["run"], payload["job_ids"])


@bp.activity_trigger(input_name="run", activity="remove_departed")
def remove_departed(run: dict) -> dict:
    return pipeline.remove_departed(run)


@bp.activity_trigger(input_name="payload", activity="finish_export")
def finish_export(payload: dict) -> dict:
    return pipeline.finish(payload["run"], payload["outcome"])


@bp.activity_trigger(input_name="run", activity="clean_up_run")
def clean_up_run(run: dict) -> dict:
    return pipeline.clean_up(run)
