"""The storefront (`/`) and the operator console (`/console`): files from gateway/static.

No build step: plain HTML, CSS and JavaScript modules, read once at start, served with a
content security policy that allows only this origin (no inline script or style), an
ETag (a 304 for a repeat), gzip when the browser takes it, and cache headers — the pages
revalidate every time, the files they load are fresh for a few minutes.

/console is served only to an admin. A page load carries no Authorization header, so the
storefront keeps the access token in a cookie scoped to /console as well (SameSite=Strict);
the gateway verifies that token and its signed roles exactly as for /api/admin/*.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin import ADMIN_PREFIX, ADMIN_ROLE, AdminConsole, admin_routes
from gateway.auth import TokenVerifier
from gateway.errors import HttpError

# The console's API lives in gateway/admin.py; the app takes both from here.
__all__ = ["ADMIN_PREFIX", "AdminConsole", "Assets", "admin_routes", "console_access",
           "web_routes"]

STATIC_DIR = Path(__file__).with_name("static")
CONSOLE_COOKIE = "shop_token"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
PAGE_CACHE = "no-cache"  # always revalidated: a deploy shows at once
ASSET_CACHE = "public, max-age=300"
_MIN_GZIP = 512
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".json": "application/json"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str


def _load(path: Path) -> Asset:
    body = path.read_bytes()
    media = (_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
             or "application/octet-stream")
    packed = gzip.compress(body, 9, mtime=0) if len(body) >= _MIN_GZIP else None
    if packed is not None and len(packed) >= len(body):
        packed = None
    return Asset(body, packed, f'"{hashlib.sha256(body).hexdigest()[:20]}"', media)


class Assets:
    """Every file under `root`, by its path relative to it (read once)."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.files = {p.relative_to(root).as_posix(): _load(p)
                      for p in sorted(root.rglob("*")) if p.is_file()}

    def response(self, request: Request, name: str, *, cache: str,
                 status: int = 200) -> Response:
        asset = self.files.get(name)
        if asset is None:
            return Response("not found", 404, media_type="text/plain",
                            headers={**SECURITY_HEADERS, "cache-control": "no-store"})
        headers = {**SECURITY_HEADERS, "cache-control": cache, "etag": asset.etag,
                   "vary": "accept-encoding"}
        if status == 200 and asset.etag in request.headers.get("if-none-match", ""):
            return Response(b"", 304, headers=headers)
        body = asset.body
        if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["content-encoding"] = "gzip"
        return Response(body, status, media_type=asset.media_type, headers=headers)


async def console_access(verifier: TokenVerifier, request: Request) -> int:
    """200 for an admin's cookie, 401 without a valid token, 403 for anyone else."""
    token = request.cookies.get(CONSOLE_COOKIE, "")
    if not token:
        return 401
    try:
        identity = await verifier.verify_identity(token)
    except HttpError as err:
        return 401 if err.http_status == 401 else err.http_status
    return 200 if ADMIN_ROLE in identity.roles else 403


def web_routes(verifier: TokenVerifier, assets: Assets | None = None) -> list[Route]:
    files = assets or Assets()

    async def storefront(request: Request) -> Response:
        return files.response(request, "index.html", cache=PAGE_CACHE)

    async def console(request: Request) -> Response:
        status = await console_access(verifier, request)
        page = {200: "console.html", 401: "console-login.html"}.get(status, "console-denied.html")
        # Private either way: one user's answer must never be served to another.
        return files.response(request, page, cache="no-store, private", status=status)

    async def static(request: Request) -> Response:
        name = str(request.path_params["path"])
        if name.endswith(".html"):  # the pages have their own routes and checks
            return files.response(request, "", cache=ASSET_CACHE)
        return files.response(request, name, cache=ASSET_CACHE)

    return [
        Route("/", storefront, methods=["GET", "HEAD"]),
        Route("/console", console, methods=["GET", "HEAD"]),
        Route("/static/{path:path}", static, methods=["GET", "HEAD"]),
    ]
