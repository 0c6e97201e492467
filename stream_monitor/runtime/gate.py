"""The rollout gate over HTTP, on the worker's Faust web server (``web_bind``/``web_port`` settings).

``GET|POST /gate/{model}``  status from :func:`stream_monitor.core.gate.gate_response`: 200 only for PROMOTE
                           (a Flagger ``confirm-promotion`` webhook); the JSON body says why.
``GET /health/{model}``     always 200 (while the store answers) with the same body plus the verdict
                           document: for Argo Rollouts' ``web`` provider, which reads it by ``jsonPath``.

Query parameters narrow the verdict read: ``version`` (the candidate version being rolled out: pass
it, so an earlier rollout's verdict is never read as this one's), ``deployment`` (rollout id) and
``kind`` (``canary`` or ``shadow``). Verdicts are read from the state store, so every worker answers
the same. A store that does not answer gives 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from stream_monitor.core.clock import Clock
from stream_monitor.sinks.health import read_gate
from stream_monitor.state.base import StateStore, StoreUnavailable

__all__ = ["add_gate_views"]

log = logging.getLogger(__name__)


def add_gate_views(app: faust.App, store: StateStore, clock: Clock) -> None:
    """Register ``/gate/{model}`` and ``/health/{model}`` on the app's web server."""

    async def answer(view: faust.web.View, request: Any, model: str, always_ok: bool) -> Any:
        query = request.query
        try:
            status, body, doc = await asyncio.to_thread(
                read_gate,
                store,
                model,
                clock.now_ms(),
                query.get("version"),
                query.get("deployment"),
                query.get("kind"),
            )
        except StoreUnavailable as exc:
            return view.json({"decision": "HOLD", "reason": f"state store unavailable: {exc}"}, status=503)
        if always_ok:
            return view.json({**body, "document": doc}, status=200)
        return view.json(body, status=status)

    @app.page("/gate/{model}")
    class Gate(faust.web.View):
        async def get(self, request: Any, model: str) -> Any:
            return await answer(self, request, model, always_ok=False)

        async def post(self, request: Any, model: str) -> Any:
            # Flagger calls webhooks with POST (its JSON payload names the canary, not the model).
            return await answer(self, request, model, always_ok=False)

    @app.page("/health/{model}")
    class Health(faust.web.View):
        async def get(self, request: Any, model: str) -> Any:
            return await answer(self, request, model, always_ok=True)
