"""The web dashboard served at `/` by every node (filled in by the dashboard work)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def add_dashboard(app: web.Application, grid: Any, extra: dict) -> None:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>jobgrid</title><p>jobgrid node " + grid.id,
                            content_type="text/html")

    app.router.add_get("/", index)
