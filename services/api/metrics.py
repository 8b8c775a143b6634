"""Counting the API's answers to sends and callbacks, whatever part of the app gave them."""

from __future__ import annotations

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics
from shared.contract import CALLBACK_PATH, SEND_PATH

_COUNTED: dict[str, Counter] = {
    SEND_PATH: metrics.SENDS,
    CALLBACK_PATH: metrics.CALLBACKS_RECEIVED,
}


class AnswerCounter:
    """Counts each POST to send and callback by outcome: `accepted`, or the refusal's status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counter = _COUNTED.get(scope.get("path", "")) if scope["type"] == "http" else None
        if counter is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                counter.labels("accepted" if status == 200 else str(status)).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
