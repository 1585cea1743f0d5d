"""The operator page the twin API serves at ``/``: static files, security headers, alerts and range queries.

    GET /                        ingest/operator_ui/index.html
    GET /ui/<file>               the page's script, style sheet and vendored uPlot (a fixed list: ``STATIC``)
    GET /v1/alerts               firing alerts from Alertmanager (``[twin_api] alertmanager_url``), or
                                 ``{"configured": false, "alerts": []}`` without one
    GET /v1/query_range?query=…&start=…&end=…&step=…   PromQL range query, passed through to the TSDB

The page has no build step: plain HTML, one script and one style sheet, with
uPlot (MIT, its licence beside it) vendored unchanged from npm. It renders data
with ``textContent`` only, never markup, and every response carries
``SECURITY_HEADERS`` (a Content-Security-Policy that allows scripts, styles and
fetches from this origin only). It is served by the twin API's own server, so
it sits behind the same gateway and authentication as the API.

Alertmanager's answer is hostile input like a twin: at most ``MAX_ALERTS_BYTES``
are read, it must be a JSON list, and only string labels and annotations of at
most ``MAX_ALERTS`` alerts are passed on.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["STATIC", "SECURITY_HEADERS", "static_files", "firing_alerts", "range_query_params", "alert_error", "PageError"]

UI_DIR = Path(__file__).resolve().parent / "operator_ui"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
    "/ui/vendor/uplot/uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/ui/vendor/uplot/uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    "/ui/vendor/uplot/LICENSE": ("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_ALERTS_BYTES = 4 * 1024 * 1024
MAX_ALERTS = 500
MAX_LABEL_CHARS = 1024
MAX_RANGE_POINTS = 1100
_ANNOTATIONS = ("summary", "description", "runbook", "runbook_url")


class PageError(ValueError):
    """A bad request parameter: ``field``, ``value`` and what is allowed, for a 400 answer."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        shown = repr(value)
        super().__init__(f"{field} {rule} (got {shown[:60] + '…' if len(shown) > 60 else shown})")


def static_files(ui_dir: Path = UI_DIR) -> dict[str, tuple[bytes, str]]:
    """URL path → (body, content type) of every file in ``STATIC``, read once; a missing file raises OSError."""
    return {url: ((ui_dir / name).read_bytes(), kind) for url, (name, kind) in STATIC.items()}


def range_query_params(params: dict[str, list[str]]) -> dict[str, str]:
    """The ``query_range`` parameters to forward, checked: one each, finite numbers, at most ``MAX_RANGE_POINTS``."""
    out: dict[str, str] = {}
    for name in ("query", "start", "end", "step"):
        values = params.get(name, [])
        if len(values) != 1 or not values[0].strip():
            raise PageError(name, values, "must be given exactly once")
        out[name] = values[0]
    numbers = {}
    for name in ("start", "end", "step"):
        try:
            numbers[name] = float(out[name])
        except ValueError:
            raise PageError(name, out[name], "must be a number (Unix seconds; step in seconds)") from None
        if not math.isfinite(numbers[name]):
            raise PageError(name, out[name], "must be finite")
    if numbers["step"] <= 0:
        raise PageError("step", out["step"], "must be above 0")
    if numbers["end"] < numbers["start"]:
        raise PageError("end", out["end"], f"must not be before start {out['start']}")
    points = (numbers["end"] - numbers["start"]) / numbers["step"]
    if points > MAX_RANGE_POINTS:
        raise PageError("step", out["step"], f"gives {points:.0f} points; at most {MAX_RANGE_POINTS} are served")
    return out


def firing_alerts(alertmanager_url: str | None, timeout_s: float) -> dict[str, Any]:
    """``{"configured": bool, "alerts": [...]}``: active, unsilenced, uninhibited alerts, newest first.

    Each alert is ``{"labels": {...}, "annotations": {...}, "startsAt": str, "fingerprint": str}``.
    Raises OSError when Alertmanager does not answer and ValueError when its answer is not an alert list.
    """
    if alertmanager_url is None:
        return {"configured": False, "alerts": []}
    query = urllib.parse.urlencode({"active": "true", "silenced": "false", "inhibited": "false"})
    url = f"{alertmanager_url.rstrip('/')}/api/v2/alerts?{query}"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # nosec B310 # alertmanager_url: http(s) only, checked by the config parser
        body = resp.read(MAX_ALERTS_BYTES + 1)
    if len(body) > MAX_ALERTS_BYTES:
        raise ValueError(f"Alertmanager answered more than {MAX_ALERTS_BYTES} bytes")
    raw = json.loads(body)
    if not isinstance(raw, list):
        raise ValueError("Alertmanager's answer is not a list of alerts")
    alerts = []
    for item in raw[:MAX_ALERTS]:
        if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
            continue
        annotations = item.get("annotations") if isinstance(item.get("annotations"), dict) else {}
        alerts.append({
            "labels": _strings(item["labels"]),
            "annotations": _strings({k: v for k, v in annotations.items() if k in _ANNOTATIONS}),
            "startsAt": item.get("startsAt") if isinstance(item.get("startsAt"), str) else "",
            "fingerprint": item.get("fingerprint") if isinstance(item.get("fingerprint"), str) else "",
        })
    alerts.sort(key=lambda a: a["startsAt"], reverse=True)
    return {"configured": True, "alerts": alerts}


def _strings(mapping: dict[Any, Any]) -> dict[str, str]:
    return {str(k)[:MAX_LABEL_CHARS]: v[:MAX_LABEL_CHARS] for k, v in list(mapping.items())[:64] if isinstance(v, str)}


def alert_error(exc: Exception) -> dict[str, Any]:
    """The 502 body when Alertmanager failed (the page shows it in place of the list)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return {"configured": True, "alerts": [], "error": f"Alertmanager: {reason}"}
