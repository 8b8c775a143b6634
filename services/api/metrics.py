"""Counting the API's answers to sends and callbacks, whatever part of the app gave them.

A batch of callbacks refused whole counts once, by its status; one answered 200 is counted per
callback by its route.
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics
from shared.contract import CALLBACK_PATH, CALLBACKS_PATH, SEND_PATH

_COUNTED: dict[str, Counter] = {
    SEND_PATH: metrics.SENDS,
    CALLBACK_PATH: metrics.CALLBACKS_RECEIVED,
    CALLBACKS_PATH: metrics.CALLBACKS_RECEIVED,
}
#: Paths whose 200 answers many callbacks: the route counts each; only a refusal is counted here.
_COUNTED_BY_THE_ROUTE = {CALLBACKS_PATH}


class AnswerCounter:
    """Counts each POST to send and callback by outcome: `accepted`, or the refusal's status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        counter = _COUNTED.get(path) if scope["type"] == "http" else None
        if counter is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        by_the_route = path in _COUNTED_BY_THE_ROUTE

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status != 200:
                    counter.labels(str(status)).inc()
                elif not by_the_route:
                    counter.labels("accepted").inc()
            await send(message)

        await self.app(scope, receive, counting_send)
