"""Run history: the last runs' reports per export, and an HTML page of them (server-rendered, no scripts:
counts, durations, failures, rejected rows with reasons, and a small SVG chart of profiles sent and removed
per run)."""

from __future__ import annotations

from html import escape

import orjson

from shared.platform.storage import ObjectStore

RUNS_SHOWN = 20


def recent_reports(reports: ObjectStore, export: str, limit: int = RUNS_SHOWN) -> list[dict]:
    """Newest first. Report blobs are `runs/<export>/<run id>.json` (rejects files beside them are skipped)."""
    names = [n for n in reports.list(f"runs/{export}/") if n.endswith(".json")]
    docs = [orjson.loads(reports.read_bytes(n)) for n in names]
    docs.sort(key=lambda d: d.get("started_at") or "", reverse=True)
    return docs[:limit]


def _num(value) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value if value is not None else ""))


def _chart(runs: list[dict]) -> str:
    """Bars of profiles sent (up) and removed (down) per run, oldest on the left."""
    runs = list(reversed(runs))
    if not runs:
        return ""
    width, half, bar = 24 * len(runs) + 40, 60, 14
    top = max([r.get("profiles_submitted", 0) for r in runs] + [r.get("profiles_removed", 0) for r in runs] + [1])
    parts = [
        f'<svg class="chart" role="img" aria-label="profiles sent and removed per run" width="{width}" '
        f'height="{2 * half + 20}" viewBox="0 0 {width} {2 * half + 20}">',
        f'<line x1="30" y1="{half + 10}" x2="{width}" y2="{half + 10}" stroke="#999"/>',
    ]
    for i, r in enumerate(runs):
        x = 34 + 24 * i
        sent_n, removed_n = r.get("profiles_submitted", 0), r.get("profiles_removed", 0)
        # A run that sent or removed anyone shows at least a sliver, however tall its neighbours.
        sent, removed = (max(2, round(half * n / top)) if n else 0 for n in (sent_n, removed_n))
        title = f"{r.get('run_id', '')}: sent {sent_n:,}, removed {removed_n:,}"
        parts.append(
            f"<g><title>{escape(title)}</title>"
            f'<rect class="sent" x="{x}" y="{half + 10 - sent}" width="{bar}" height="{sent}" fill="#2b7de9"/>'
            f'<rect class="removed" x="{x}" y="{half + 10}" width="{bar}" height="{removed}" fill="#e9672b"/></g>'
        )
    parts.append(f'<text x="0" y="14" font-size="11">{top:,}</text></svg>')
    return "".join(parts)


def _run_rows(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        status = r.get("status", "")
        rejects = "".join(
            f"<li>{escape(str(x.get('partition')))} row {_num(x.get('row'))}: {escape(str(x.get('reason')))}</li>"
            for x in (r.get("rejects_sample") or [])[:5] + (r.get("failures_sample") or [])[:5]
        )
        rows.append(
            f'<tr class="run {escape(status)}"><td>{escape(str(r.get("started_at") or "")[:16].replace("T", " "))}</td>'
            f'<td class="status">{escape(status)}{" (dry run)" if r.get("dry_run") else ""}</td>'
            f"<td>{_num(r.get('rows_read'))}</td><td>{_num(r.get('profiles_submitted'))}</td>"
            f"<td>{_num(r.get('profiles_unchanged'))}</td><td>{_num(r.get('profiles_imported'))}</td>"
            f"<td>{_num(r.get('profiles_failed'))}</td><td>{_num(r.get('profiles_removed'))}</td>"
            f"<td>{_num(r.get('rows_rejected'))}</td><td>{_num(r.get('duration_s'))} s</td>"
            f'<td class="detail">{escape(r.get("error") or "")}<ul>{rejects}</ul></td></tr>'
        )
    return "".join(rows)


def render_page(history: dict[str, list[dict]]) -> str:
    sections = []
    for export, runs in sorted(history.items()):
        sections.append(
            f'<section class="export" id="export-{escape(export)}"><h2>{escape(export)}</h2>'
            f"{_chart(runs)}"
            "<table><thead><tr><th>started</th><th>status</th><th>rows</th><th>sent</th><th>unchanged</th>"
            "<th>imported</th><th>failed</th><th>removed</th><th>rejected rows</th><th>duration</th>"
            "<th>errors and rejected rows</th></tr></thead>"
            f"<tbody>{_run_rows(runs) or '<tr><td colspan=11>no runs yet</td></tr>'}</tbody></table></section>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Klaviyo sync: run history</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;"
        "margin:.5rem 0 2rem}td,th{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:right;"
        "vertical-align:top}td.detail,td.status,th:last-child{text-align:left}tr.failed td.status{color:#b00}"
        "tr.partially_succeeded td.status{color:#b60}tr.succeeded td.status{color:#070}ul{margin:0;padding-left:1rem}"
        ".legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem}</style></head><body>"
        "<h1>Run history</h1><p class=legend>per run:<span style='background:#2b7de9'></span>profiles sent"
        "<span style='background:#e9672b'></span>profiles removed</p>"
        f"{''.join(sections) or '<p>No exports are configured yet.</p>'}</body></html>"
    )
