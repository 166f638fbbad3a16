"""The web dashboard served at `/` by every node: static HTML/JS polling the JSON API, plus `/stats`.

No build step and nothing from a CDN: the files under `static/` are package data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
# the pages load only their own scripts and styles, talk only to their node, and are never framed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css"}


def _static(name: str) -> web.Response:
    path = STATIC / name
    ext = name[name.rfind("."):]
    return web.Response(body=path.read_bytes(), content_type=_TYPES.get(ext, "application/octet-stream"),
                        headers={"Cache-Control": "no-cache", **SECURITY_HEADERS})


def done_per_second(done_times: Any, now: float, window: int = 300) -> list[int]:
    """Jobs finished in each of the last `window` whole seconds, oldest first."""
    buckets = [0] * window
    start = int(now) - window + 1
    for t in reversed(done_times):
        i = int(t) - start
        if i < 0:
            break
        if i < window:
            buckets[i] += 1
    return buckets


def add_dashboard(app: web.Application, grid: Any, extra: dict) -> None:
    async def index(request: web.Request) -> web.Response:
        return _static("index.html")

    async def job_page(request: web.Request) -> web.Response:
        return _static("job.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("app.js", "job.js", "style.css"):
            raise web.HTTPNotFound()
        return _static(name)

    async def stats(request: web.Request) -> web.Response:
        now = time.time()
        m = grid.metrics
        return web.json_response({
            "node": grid.id, "now": now, "done_total": len(grid.done_times),
            "per_second": done_per_second(grid.done_times, now),
            "submitted": m.submitted._value.get(), "started": m.started._value.get(),
            "succeeded": m.succeeded._value.get(), "failed": m.failed._value.get(),
        }, headers={"X-Content-Type-Options": "nosniff"})

    app.router.add_get("/", index)
    app.router.add_get("/job/{id}", job_page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/stats", stats)
