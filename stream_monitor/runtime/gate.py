"""The worker's HTTP endpoints on its Faust web server (``web_host``/``web_port`` settings).

``GET|POST /gate/{model}``  status from :func:`stream_monitor.core.gate.gate_response`: 200 only for PROMOTE
                           (a Flagger ``confirm-promotion`` webhook); the JSON body says why.
``GET /health/{model}``     always 200 (while the store answers) with the same body plus the verdict
                           document: for Argo Rollouts' ``web`` provider, which reads it by ``jsonPath``.
``GET /livez``              200 while the worker's event loop serves requests (a liveness probe).
``GET /readyz``             200 when the state store answers and the worker holds the claims of its current
                           partition assignment, else 503; the JSON body says which part is missing (a
                           readiness probe; see docs/kubernetes.md).

Query parameters narrow the verdict read: ``version`` (the candidate version being rolled out: pass
it, so an earlier rollout's verdict is never read as this one's), ``deployment`` (rollout id) and
``kind`` (``canary`` or ``shadow``). Verdicts are read from the state store, so every worker answers
the same. A store that does not answer gives 503.

This module may import faust, the core and the state and sink layers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust

from stream_monitor.core.clock import Clock
from stream_monitor.sinks.health import read_gate
from stream_monitor.state.base import StateStore, StoreUnavailable

__all__ = ["READY_TIMEOUT_S", "add_gate_views", "readiness"]

log = logging.getLogger(__name__)

# How long /readyz waits for the store. Below the kubelet's probe timeout (docs/kubernetes.md), so a
# store that hangs gives a 503 that says so rather than a probe timeout that says nothing.
READY_TIMEOUT_S = 2.0


async def readiness(
    store: StateStore, claims_held: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S
) -> tuple[bool, dict[str, str]]:
    """Whether the worker is ready, and why not: the store answers, and the claims of the assignment are held.

    >>> from stream_monitor.state.memory import MemoryStore
    >>> asyncio.run(readiness(MemoryStore(), lambda: True))
    (True, {'store': 'ok', 'claims': 'held'})
    >>> asyncio.run(readiness(MemoryStore(), lambda: False))
    (False, {'store': 'ok', 'claims': 'not held (starting, or a rebalance is under way)'})
    """
    # Any read of the store will do; closed_before is one small key.
    try:
        await asyncio.wait_for(asyncio.to_thread(store.closed_before), timeout_s)
        store_state = "ok"
    except StoreUnavailable as exc:
        store_state = f"unavailable: {exc}"
    except TimeoutError:
        store_state = f"unavailable: no answer within {timeout_s:g} s"
    held = claims_held()
    claims = "held" if held else "not held (starting, or a rebalance is under way)"
    return store_state == "ok" and held, {"store": store_state, "claims": claims}


def add_gate_views(
    app: faust.App, store: StateStore, clock: Clock, *, claims_held: Callable[[], bool]
) -> None:
    """Register ``/gate/{model}``, ``/health/{model}``, ``/livez`` and ``/readyz`` on the app's web server.

    ``claims_held`` tells whether the worker holds the state-store claims of its current partition
    assignment (false from a rebalance until the claims are in).
    """

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

    # Liveness asks nothing of the store or the broker: their outages are waited out by the worker
    # itself (commits retry), and a restart would not bring them back. What a restart does cure is an
    # event loop that no longer runs, and then this page does not answer.
    @app.page("/livez")
    class Live(faust.web.View):
        async def get(self, request: Any) -> Any:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(faust.web.View):
        async def get(self, request: Any) -> Any:
            ready, parts = await readiness(store, claims_held)
            if not ready:
                log.debug("not ready: %s", parts)
            body = {"status": "ok" if ready else "not ready", **parts}
            return self.json(body, status=200 if ready else 503)
