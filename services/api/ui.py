"""The dashboard's pages at /ui: static files shipped in the package (services/api/ui/), no
server of their own, no CDN. The pages read the JSON API with the key the operator signed in
with, sent as the usual header (never in a URL); they are plain files, so anyone may load them.

Content-Security-Policy: scripts and styles from this origin only (no `unsafe-inline`, no
`eval`), requests to this origin only, no frames: a task's payload that holds markup is shown
as text by the pages (textContent), and could run nothing even if it were not.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from services.api.errors import ApiError

router = APIRouter(include_in_schema=False)

UI_DIR = Path(__file__).with_name("ui")
UI_PATH = "/ui"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new version of the pages reaches an open browser on its next load.
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> tuple[bytes, str] | None:
    """A file of the dashboard and its type; None for any other name (no path leaves UI_DIR)."""
    path = UI_DIR / name
    kind = _TYPES.get(path.suffix)
    if kind is None or "/" in name or name.startswith(".") or not path.is_file():
        return None
    return path.read_bytes(), kind


def _serve(name: str) -> Response:
    found = _asset(name)
    if found is None:
        raise ApiError(404, "Not Found")
    body, kind = found
    return Response(body, media_type=kind, headers=HEADERS)


@router.get(UI_PATH)
@router.get(f"{UI_PATH}/")
async def page() -> Response:
    """The dashboard (one page; its views are #/overview, #/tasks, #/task/ID…)."""
    return _serve("index.html")


@router.get(f"{UI_PATH}/{{name}}")
async def asset(name: str) -> Response:
    return _serve(name)
