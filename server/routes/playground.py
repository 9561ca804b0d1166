"""The playground: a chat page at `/` (static HTML, CSS and ES modules from server/playground/,
no build step) that talks to the public API like any client, with the same API key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parents[1] / "playground"
ASSETS_PATH = "/playground"

# Everything the page loads comes from this server; no inline script or style, no frames, no
# forms posted anywhere: model output that slipped into the DOM as markup could still not run.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgraded server never runs stale code
}

router = APIRouter(tags=["playground"], include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=HEADERS)


class _Assets(StaticFiles):
    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the page at / and its files under /playground/."""
    app.include_router(router)
    app.mount(ASSETS_PATH, _Assets(directory=PAGE_DIR), name="playground")
