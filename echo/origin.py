"""The WebSocket Origin policy: browsers must come from an allowed host, other clients may connect,
and a handshake that carries a session cookie must come from this site's own origin."""

import logging
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}


class AllowedHostsOriginValidator(OriginValidator):
    """Reject a handshake whose Origin header matches no ``ALLOWED_HOSTS`` entry; log why.

    Channels' own validator also rejects a handshake with no Origin header at all, which
    shuts out every non-browser client (scripts, load tools, the raw handshake). Browsers
    always send Origin on a WebSocket handshake, so its absence is no cross-site risk.

    A browser sends the session cookie with a WebSocket handshake from any page, so a host
    match is not enough for one that carries it (a page on another port of an allowed host
    would act as the signed-in user): its Origin must be the site's own scheme, host and port,
    or an entry of ``CSRF_TRUSTED_ORIGINS``, as Django's CSRF check demands of a form post.
    """

    def __init__(self, application):
        super().__init__(application, settings.ALLOWED_HOSTS)
        self.session_cookie = settings.SESSION_COOKIE_NAME.encode("latin1") + b"="

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", ()))
        origin = headers.get(b"origin")
        if origin is None:
            return await self.application(scope, receive, send)
        origin = origin.decode("latin1")
        if not self.validate_origin(urlparse(origin)):
            why = f"Origin {origin!r} matches no entry of ALLOWED_HOSTS {self.allowed_origins}"
        elif self.session_cookie in headers.get(b"cookie", b"") and not same_site(origin, scope, headers):
            why = f"Origin {origin!r} is not this site's origin, and the handshake carries a session cookie"
        else:
            return await self.application(scope, receive, send)
        client = scope.get("client") or ("-", "-")
        logger.warning(
            "handshake rejected peer=%s:%s path=%s: %s", client[0], client[1], scope.get("path"), why
        )
        return await WebsocketDenier()(scope, receive, send)


def same_site(origin: str, scope: dict, headers: dict[bytes, bytes]) -> bool:
    """Tell whether ``origin`` is this site's own scheme, host and port, or a trusted origin."""
    parsed = urlparse(origin)
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        wanted = urlparse(trusted)
        if parsed.scheme == wanted.scheme and is_same_domain(parsed.netloc, wanted.netloc):
            return True
    scheme = request_scheme(scope, headers)
    host = urlparse(f"//{headers.get(b'host', b'').decode('latin1')}")
    try:
        origin_port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
        host_port = host.port or DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is not a number
        return False
    return (parsed.scheme, parsed.hostname, origin_port) == (scheme, host.hostname, host_port)


def request_scheme(scope: dict, headers: dict[bytes, bytes]) -> str:
    """Return the scheme of the page this handshake belongs to: https or http."""
    if scope.get("scheme") in ("wss", "https"):
        return "https"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name = proxy_header[0].removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
        if headers.get(name, b"").decode("latin1") == proxy_header[1]:
            return "https"
    return "https" if settings.HTTPS else "http"
