"""The run console: recent runs per export, runs in progress, and one run's detail, as server-rendered HTML
(no scripts: a page with runs in progress refreshes itself with a meta refresh).

- `render_page`: runs in progress (phase and progress), then per export a chart of profiles sent, failed and
  removed per run with dates, "Run now" / "Dry run" buttons for users allowed to run it, and a table of
  its last runs (every count, mode, trigger, source file, times in UTC, errors wrapped) linking to...
- `render_run`: one run's report fields, its Klaviyo jobs, and its rejected, duplicate and failed rows
  grouped by reason with counts ("showing 20 of 1,204"), with a download link to the rejects file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

import orjson

from shared.platform.storage import ObjectStore

RUNS_SHOWN = 20
ROWS_PER_REASON = 20
MAX_REASONS = 100  # distinct reasons listed; the rest are counted under "other reasons"
REFRESH_S = 5

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;"
    "margin:.5rem 0 2rem;font-size:.8rem}td,th{border-bottom:1px solid #ddd;padding:.25rem .35rem;text-align:right;"
    "vertical-align:top}td.text,th.text{text-align:left}td.when{white-space:nowrap}"
    "td.detail{text-align:left;white-space:normal;overflow-wrap:anywhere;color:#444;border-bottom:1px solid #ddd}"
    "tbody.run tr:first-child td{border-bottom:none}p.error,p.warnings{margin:0 0 .2rem}"
    ".failed .status{color:#b00}.partially_succeeded .status{color:#b60}.succeeded .status{color:#070}"
    "ul{margin:0;padding-left:1rem}.legend span{display:inline-block;width:.8rem;height:.8rem;"
    "margin:0 .3rem 0 1rem}form.actions{display:inline;margin-left:1rem}form.actions button{margin-right:.4rem}"
    "dl.fields{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dl.fields dd{margin:0;"
    "overflow-wrap:anywhere}progress{width:8rem}"
)


# -- reading reports -----------------------------------------------------------------------------------------


def recent_reports(reports: ObjectStore, export: str, limit: int = RUNS_SHOWN) -> list[dict]:
    """Newest first. Report blobs are `runs/<export>/<run id>.json` (rejects files beside them are skipped)."""
    names = [n for n in reports.list(f"runs/{export}/") if n.endswith(".json")]
    docs = [orjson.loads(reports.read_bytes(n)) for n in names]
    docs.sort(key=lambda d: d.get("started_at") or "", reverse=True)
    return docs[:limit]


def report_name(instance_id: str) -> str:
    """Where a run's report is: instance ids are '<export>.<digest>' (export names hold no '.')."""
    return f"runs/{instance_id.partition('.')[0]}/{instance_id}.json"


def rejects_name(instance_id: str) -> str:
    return report_name(instance_id).removesuffix(".json") + ".rejects.ndjson"


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        yield from whole
    if rest:
        yield rest


def group_rejects(chunks: Iterable[bytes], per_reason: int = ROWS_PER_REASON) -> tuple[list[dict], dict[str, int]]:
    """Read a rejects file (NDJSON, in pieces) once: groups of {kind, reason, count, rows (the first
    `per_reason`)}, largest first, and the count per kind."""
    groups: dict[tuple[str, str], dict] = {}
    kinds: dict[str, int] = {}
    for line in _lines(chunks):
        if not line.strip():
            continue
        row = orjson.loads(line)
        kind, reason = str(row.get("kind", "rejected")), str(row.get("reason", ""))
        kinds[kind] = kinds.get(kind, 0) + 1
        key = (kind, reason) if len(groups) < MAX_REASONS or (kind, reason) in groups else (kind, "other reasons")
        group = groups.setdefault(key, {"kind": key[0], "reason": key[1], "count": 0, "rows": []})
        group["count"] += 1
        if len(group["rows"]) < per_reason:
            group["rows"].append(row)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["kind"], g["reason"])), kinds


# -- formatting ----------------------------------------------------------------------------------------------


def _num(value) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value if value is not None else ""))


def _when(value, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC' (reports are written in UTC; say so)."""
    if not value:
        return ""
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return escape(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(fmt)


def _day(value) -> str:
    text = _when(value)
    return text[5:10] if text else ""


def _page(title: str, body: str, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>{meta}<title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


# -- the history page ----------------------------------------------------------------------------------------


def _chart(runs: list[dict]) -> str:
    """Per run, oldest on the left: profiles sent (blue) and failed (red) up, removed (orange) down; the
    run's day under its bars."""
    runs = list(reversed(runs))
    if not runs:
        return ""
    step, half, bar, left = 36, 60, 10, 44
    width, height = step * len(runs) + left + 10, 2 * half + 46
    counts = [
        (r.get("profiles_submitted") or 0, r.get("profiles_failed") or 0, r.get("profiles_removed") or 0) for r in runs
    ]
    top = max([max(c) for c in counts] + [1])
    axis = half + 10
    parts = [
        f'<svg class="chart" role="img" aria-label="profiles sent, failed and removed per run" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f'<line x1="{left - 4}" y1="{axis}" x2="{width}" y2="{axis}" stroke="#999"/>',
        f'<text x="0" y="14" font-size="10">{top:,}</text>',
        f'<text x="0" y="{2 * half + 10}" font-size="10">{top:,}</text>',
    ]

    def height_of(n: int) -> int:  # a run that sent or removed anyone shows at least a sliver
        return max(2, round(half * n / top)) if n else 0

    for i, (r, (sent_n, failed_n, removed_n)) in enumerate(zip(runs, counts, strict=True)):
        x = left + step * i
        sent, failed, removed = height_of(sent_n), height_of(failed_n), height_of(removed_n)
        title = f"{_when(r.get('started_at'))} {r.get('status', '')}: sent {sent_n:,}, failed {failed_n:,}, "
        title += f"removed {removed_n:,}"
        day = escape(_day(r.get("started_at")))
        parts.append(
            f"<g><title>{escape(title)}</title>"
            f'<rect class="sent" x="{x}" y="{axis - sent}" width="{bar}" height="{sent}" fill="#2b7de9"/>'
            f'<rect class="failed" x="{x + bar + 1}" y="{axis - failed}" width="{bar}" height="{failed}" '
            'fill="#c62828"/>'
            f'<rect class="removed" x="{x}" y="{axis}" width="{bar}" height="{removed}" fill="#e9672b"/>'
            f'<text class="date" x="{x}" y="{2 * half + 36}" font-size="10">{day}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _link(path: str, key_query: str) -> str:
    return escape(f"{path}{key_query}")


def _detail_row(r: dict) -> str:
    """The run's error and first rejected rows on a row of their own, the table's full width, wrapped."""
    rejects = "".join(
        f"<li>{escape(str(x.get('partition')))} row {_num(x.get('row'))}: {escape(str(x.get('reason')))}</li>"
        for x in (r.get("rejects_sample") or [])[:3] + (r.get("failures_sample") or [])[:3]
    )
    kinds = r.get("warning_kinds") or {}
    if not rejects and not r.get("error") and not kinds:
        return ""
    error = f'<p class="error">{escape(r["error"])}</p>' if r.get("error") else ""
    warned = "; ".join(f"{what}: {n:,}" for what, n in sorted(kinds.items()))
    warned = f'<p class="warnings">warnings: {escape(warned)}</p>' if warned else ""
    return f'<tr class="detail"><td colspan={len(COLUMNS)} class="detail">{error}{warned}<ul>{rejects}</ul></td></tr>'


COLUMNS = (
    "started (UTC)", "status", "mode", "trigger", "source", "rows", "rejected", "duplicates", "sent", "unchanged",
    "imported", "failed", "removed", "subscribed / not consented", "warnings", "duration",
)  # fmt: skip


COUNT_COLUMNS = (
    "rows_read", "rows_rejected", "duplicate_rows", "profiles_submitted", "profiles_unchanged", "profiles_imported",
    "profiles_failed", "profiles_removed",
)  # fmt: skip


NO_RUNS = f"<tbody><tr><td class=text colspan={len(COLUMNS)}>no runs yet</td></tr></tbody>"


def _run_rows(runs: list[dict], key_query: str) -> str:
    rows = []
    for r in runs:
        status = r.get("status", "")
        source = str(r.get("source") or "")
        detail = _link(f"/api/history/{quote(str(r.get('run_id', '')), safe='.-_')}", key_query)
        rows.append(
            f'<tbody class="run {escape(status)}"><tr>'
            f'<td class="text when"><a href="{detail}">{_when(r.get("started_at"), "%Y-%m-%d %H:%M UTC")}</a></td>'
            f'<td class="status text">{escape(status)}{" (dry run)" if r.get("dry_run") else ""}</td>'
            f'<td class="text">{escape(str(r.get("mode") or ""))}</td>'
            f'<td class="text">{escape(str(r.get("trigger") or ""))}</td>'
            f'<td class="text" title="{escape(source)}">{escape(source.rsplit("/", 1)[-1].partition("@")[0])}</td>'
            + "".join(f"<td>{_num(r.get(k))}</td>" for k in COUNT_COLUMNS)
            + f"<td>{_num(r.get('profiles_subscribed'))} / {_num(r.get('profiles_not_consented'))}</td>"
            + f"<td>{_num(r.get('warnings'))}</td>"
            + f"<td>{_num(r.get('duration_s'))} s</td></tr>{_detail_row(r)}</tbody>"
        )
    return "".join(rows)


def _progress_row(run: dict, key_query: str) -> str:
    p = run.get("progress") or {}
    done, total = p.get("units_done", 0), p.get("units_total", 0)
    bar = f'<progress value="{done}" max="{total}"></progress>' if total else ""
    detail = _link(f"/api/history/{quote(run['instance_id'], safe='.-_')}", key_query)
    return (
        f'<tr class="active"><td class="text">{escape(run.get("export") or "")}</td>'
        f'<td class="text"><a href="{detail}">{escape(run["instance_id"])}</a></td>'
        f'<td class="text">{_when(run.get("created_time"))}</td>'
        f'<td class="phase text">{escape(str(p.get("phase") or run.get("runtime_status") or ""))}</td>'
        f"<td>{bar} {_num(done)} / {_num(total)}</td><td>{_num(p.get('rows_planned', 0))}</td>"
        f"<td>{_num(p.get('profiles_submitted', 0))}</td><td>{_num(p.get('profiles_imported', 0))}</td>"
        f"<td>{_num(p.get('profiles_failed', 0))}</td>"
        f"<td>{_num(p.get('jobs_done', 0))} / {_num(p.get('jobs', 0))}</td></tr>"
    )


def _actions(export: str, key_query: str) -> str:
    """Start a run as the API does (POST .../runs); `from=console` brings the browser to the run's page."""
    sep = "&" if key_query else "?"
    target = f"/api/exports/{quote(export)}/runs{key_query}{sep}from=console"
    return (
        f'<form class="actions" method="post" action="{escape(target)}">'
        f'<button type="submit" name="run" value="now">Run now</button>'
        f'<button type="submit" formaction="{escape(target)}&amp;dry_run=true" name="run" value="dry">Dry run</button>'
        "</form>"
    )


def render_page(
    history: dict[str, list[dict]],
    active: list[dict] | None = None,
    can_run: dict[str, bool] | None = None,
    key_query: str = "",
) -> str:
    """`history`: newest-first reports per export; `active`: runs in progress ({instance_id, export,
    runtime_status, created_time, progress}); `can_run`: exports the viewer may start; `key_query`:
    "?code=..." to carry a function key given in the URL on to the page's links, or ""."""
    active = active or []
    can_run = can_run or {}
    parts = ["<h1>Run history</h1>"]
    if active:
        parts.append(
            f'<section id="in-progress"><h2>In progress</h2><p>This page refreshes every {REFRESH_S} s.</p>'
            "<table><thead><tr><th class=text>export</th><th class=text>run</th><th class=text>started (UTC)</th>"
            "<th class=text>phase</th><th>units</th><th>rows planned</th><th>sent</th><th>imported</th><th>failed</th>"
            f"<th>jobs done</th></tr></thead><tbody>{''.join(_progress_row(r, key_query) for r in active)}</tbody>"
            "</table></section>"
        )
    parts.append(
        "<p class=legend>per run:<span style='background:#2b7de9'></span>profiles sent"
        "<span style='background:#c62828'></span>failed<span style='background:#e9672b'></span>removed</p>"
    )
    header = "".join(f'<th class="{"text" if i < 5 else ""}">{c}</th>' for i, c in enumerate(COLUMNS))
    for export, runs in sorted(history.items()):
        buttons = _actions(export, key_query) if can_run.get(export) else ""
        parts.append(
            f'<section class="export" id="export-{escape(export)}"><h2>{escape(export)}{buttons}</h2>'
            f"{_chart(runs)}<table><thead><tr>{header}</tr></thead>"
            f"{_run_rows(runs, key_query) or NO_RUNS}"
            "</table></section>"
        )
    if not history:
        parts.append("<p>No exports are configured yet.</p>")
    return _page("Klaviyo sync: run history", "".join(parts), refresh=bool(active))


# -- one run -------------------------------------------------------------------------------------------------

FIELDS = (
    "export", "run_id", "status", "error", "dry_run", "mode", "trigger", "list_id", "source", "entity", "started_at",
    "ended_at", "duration_s", "rows_read", "rows_rejected", "duplicate_rows", "profiles_submitted",
    "profiles_unchanged", "profiles_imported", "profiles_failed", "profiles_removed", "profiles_subscribed",
    "profiles_not_consented", "mass_removal_override", "warnings", "warning_kinds", "rejects_file",
)  # fmt: skip


def _field(name: str, value) -> str:
    if name == "warning_kinds":
        return "; ".join(f"{escape(str(what))}: {n:,}" for what, n in sorted((value or {}).items()))
    if name in ("started_at", "ended_at"):
        return _when(value)
    if name == "duration_s" and value is not None:
        return f"{value:,} s"
    return _num(value)


def render_run(
    instance_id: str,
    report: dict | None,
    status: dict | None,
    groups: list[dict],
    kinds: dict[str, int],
    key_query: str = "",
) -> str:
    """One run: its report (or, while it runs, its live progress), jobs and rejected rows by reason."""
    title = f"Run {instance_id}"
    back = _link("/api/history", key_query)
    parts = [f'<p><a href="{back}">all runs</a></p><h1>{escape(title)}</h1>']
    if report is None:
        p = (status or {}).get("progress") or {}
        phase = escape(str(p.get("phase") or (status or {}).get("runtime_status") or ""))
        parts.append(
            f'<section id="live"><p>This run is <b class="phase">{phase}</b>'
            f" (page refreshes every {REFRESH_S} s).</p><dl class=fields>"
            + "".join(f"<dt>{escape(k)}</dt><dd>{_num(v)}</dd>" for k, v in p.items() if k != "phase")
            + "</dl></section>"
        )
        return _page(title, "".join(parts), refresh=True)
    status_class = escape(str(report.get("status", "")))
    parts.append(
        f'<section id="report" class="{status_class}"><h2>Report</h2><dl class=fields>'
        + "".join(
            f'<dt>{escape(name)}</dt><dd class="{name}">{_field(name, report.get(name))}</dd>'
            for name in FIELDS
            if name in report
        )
        + "</dl></section>"
    )
    notification = report.get("notification")
    if notification:
        state = "delivered" if notification.get("delivered") else f"not delivered: {notification.get('error')}"
        parts.append(
            f'<p id="notification">Notification to {escape(str(notification.get("url")))}: {escape(state)} '
            f"({_num(notification.get('attempts'))} attempt(s))</p>"
        )
    jobs = report.get("jobs") or []
    parts.append(
        f'<section id="jobs"><h2>Klaviyo jobs ({len(jobs):,})</h2><table><thead><tr><th class=text>job</th>'
        "<th class=text>status</th><th>profiles</th><th>completed</th><th>failed</th></tr></thead><tbody>"
        + "".join(
            f'<tr class="job"><td class="text">{escape(str(j.get("id")))}</td>'
            f'<td class="text">{escape(str(j.get("status")))}</td>'
            f"<td>{_num(j.get('total'))}</td><td>{_num(j.get('completed'))}</td><td>{_num(j.get('failed'))}</td></tr>"
            for j in jobs
        )
        + (f"<tr><td colspan=5>{'none (dry run)' if report.get('dry_run') else 'none'}</td></tr>" if not jobs else "")
        + "</tbody></table></section>"
    )
    total = sum(kinds.values())
    download = _link(f"/api/runs/{quote(instance_id, safe='.-_')}/rejects", key_query)
    summary = ", ".join(f"{n:,} {k}" for k, n in sorted(kinds.items())) or "none"
    parts.append(
        f'<section id="rejects"><h2>Rejected, duplicate and failed rows ({total:,})</h2><p>{escape(summary)}. '
        f'<a id="download" href="{download}" download>Download the rejects file (NDJSON)</a></p>'
    )
    for g in groups:
        shown = len(g["rows"])
        rows = "".join(f"<li>{escape(str(x.get('partition')))} row {_num(x.get('row'))}</li>" for x in g["rows"])
        parts.append(
            f'<div class="reason"><h3><span class="kind">{escape(g["kind"])}</span>: '
            f'<span class="why">{escape(g["reason"])}</span> <span class="count">{g["count"]:,}</span></h3>'
            f'<p class="shown">showing {shown:,} of {g["count"]:,}</p><ul>{rows}</ul></div>'
        )
    parts.append("</section>")
    return _page(title, "".join(parts))
