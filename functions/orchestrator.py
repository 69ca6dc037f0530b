"""The export orchestrator: plan, push in waves, wait for Klaviyo's jobs on durable timers, finish, clean up.

Deterministic: no I/O, no clocks but context.current_utc_datetime; everything it passes is small.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import azure.durable_functions as df

from shared.pipeline import Fatal

bp = df.Blueprint()

RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2_000, max_number_of_attempts=4)
# Polls grow by half up to 15 s: one poll reads 100 jobs' states, so polling is cheap, while a long wait
# after the jobs finished is the run's time wasted (doubling to 60 s cost a 3 M-row run up to a minute).
MAX_POLL_S = 15


class Superseded(Exception):
    """A newer export of the same export configuration already ran: this one sends nothing."""


def _checked(result):
    """Steps return {"fatal": reason} for what no retry can fix (see shared.pipeline.fatal_as_result)."""
    if isinstance(result, dict) and "fatal" in result:
        raise Fatal(result["fatal"], bool(result.get("bad_source")))
    return result


def _status(context, phase: str, progress: dict) -> None:
    context.set_custom_status({"phase": phase, **progress})


@bp.orchestration_trigger(context_name="context", orchestration="export_orchestrator")
def export_orchestrator(context: df.DurableOrchestrationContext):
    run = context.get_input()
    progress = {
        "rows_planned": 0,
        "units_total": 0,
        "units_done": 0,
        "profiles_submitted": 0,
        "profiles_imported": 0,
        "profiles_failed": 0,
        "jobs": 0,
        "jobs_done": 0,
    }
    outcome: dict = {"plan": None, "pushes": [], "jobs": [], "removal": None, "error": None}
    try:
        if not run.get("dry_run"):
            delay = max(1, int(run.get("poll_interval_s", 5)))
            while True:
                turn = _checked((yield context.call_activity_with_retry("take_turn", RETRY, run)))
                outcome["source_time"] = turn["source_time"]
                if turn["status"] != "wait":
                    break
                _status(context, "waiting_for_turn", {**progress, "behind": turn["holder"]})
                yield context.create_timer(context.current_utc_datetime + timedelta(seconds=delay))
                delay = min(MAX_POLL_S, delay * 1.5)
            if turn["status"] == "superseded":
                outcome["superseded_by"] = turn["by"]
                outcome["superseded_source_time"] = turn.get("by_source_time")
                raise Superseded
        _status(context, "planning", progress)
        plan = _checked((yield context.call_activity_with_retry("plan_export", RETRY, run)))
        outcome["plan"] = plan
        units = plan["units"]
        progress.update(rows_planned=plan["rows_read"], units_total=len(units))

        if not run.get("dry_run"):
            width = max(1, int(run.get("wave_width", 8)))
            job_ids: list[str] = []
            for start in range(0, len(units), width):
                _status(context, "pushing", progress)
                wave = [
                    context.call_activity_with_retry("push_unit", RETRY, {"run": run, "index": i, "unit": units[i]})
                    for i in range(start, min(start + width, len(units)))
                ]
                results = yield context.task_all(wave)
                for result in map(_checked, results):
                    keep = ("unit", "submitted", "rejected", "warnings", "subscribed", "not_consented")
                    outcome["pushes"].append({k: result.get(k, 0) for k in keep})
                    outcome["pushes"][-1]["warning_kinds"] = result.get("warning_kinds") or {}
                    job_ids += [job["id"] for job in result["jobs"]]
                    progress["profiles_submitted"] += result["submitted"]
                    progress["profiles_failed"] += result["rejected"]
                progress.update(units_done=min(len(units), start + width), jobs=len(job_ids))

            pending = list(job_ids)
            states: dict[str, dict] = {}
            delay = max(1, int(run.get("poll_interval_s", 5)))
            while pending:
                _status(context, "waiting_for_klaviyo", progress)
                payload = {"run": run, "job_ids": pending}
                checked = _checked((yield context.call_activity_with_retry("check_jobs", RETRY, payload)))
                for job in checked:
                    states[job["id"]] = job
                pending = [j["id"] for j in checked if j["status"] not in ("complete", "cancelled")]
                done = [s for s in states.values() if s["status"] in ("complete", "cancelled")]
                progress.update(
                    jobs_done=len(done),
                    profiles_imported=sum(s["completed"] for s in states.values()),
                )
                if pending:
                    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=delay))
                    delay = min(MAX_POLL_S, delay * 1.5)
            outcome["jobs"] = [states[j] for j in job_ids if j in states]

            if plan.get("profiles_to_remove"):
                _status(context, "removing_departed", progress)
                outcome["removal"] = _checked((yield context.call_activity_with_retry("remove_departed", RETRY, run)))
    except Superseded:
        pass
    except Fatal as exc:
        outcome["error"], outcome["bad_source"] = str(exc), exc.bad_source
    except Exception as exc:  # an activity failed after its retries: the run fails, with the reason in its report
        outcome["error"] = _one_line(exc)

    _status(context, "finishing", progress)
    report = yield context.call_activity_with_retry("finish_export", RETRY, {"run": run, "outcome": outcome})
    # The report is written: the workspace (every email of the segment) goes now, in its own step after
    # finish, so that a retried finish still finds it. If this fails the lifecycle rule removes it later.
    with contextlib.suppress(Exception):  # the run's outcome stands
        yield context.call_activity_with_retry("clean_up_run", RETRY, run)
    _status(context, report["status"], {**progress, "profiles_failed": report["profiles_failed"]})
    return report


def _one_line(exc: Exception) -> str:
    """Durable wraps an activity's failure as 'Activity function ... failed: <message>'; keep the message."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    marker = "failed: "
    return text.split(marker, 1)[1].strip() if marker in text else text
