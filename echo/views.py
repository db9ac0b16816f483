"""HTTP views: the chat page, the answer to a plain GET on a WebSocket route, health, metrics, favicon,
and tokens for a signed-in session."""

import functools
import json

from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from echo import tokens
from echo.health import health, log_changes

FAVICON = "echo/favicon.svg"

UPGRADE_REQUIRED = "This is a WebSocket endpoint: a WebSocket upgrade is required.\n"

# The chat page runs its own script and style files and talks to its own host, nothing else:
# an injected <script> or inline handler does not run even if a message ever reached the DOM as HTML.
CHAT_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def index(request: HttpRequest) -> HttpResponse:
    """Show the chat page."""
    response = render(request, "echo/index.html")
    response["Content-Security-Policy"] = CHAT_PAGE_POLICY
    return response


def upgrade_required(request: HttpRequest) -> HttpResponse:
    """Tell a plain HTTP client that this URL speaks WebSocket only."""
    response = HttpResponse(UPGRADE_REQUIRED, status=400, content_type="text/plain; charset=utf-8")
    response["Upgrade"] = "websocket"
    return response


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Say whether the database and Redis answer: 200 when both do, 503 naming what is down.

    Anyone may probe it, so only staff see why a dependency is down (its redacted address and
    the error); others see "ok" or "down".
    """
    checks = health()
    log_changes(checks)
    healthy = all(state == "ok" for state in checks.values())
    if not (request.user.is_authenticated and request.user.is_staff):
        checks = {name: "ok" if state == "ok" else "down" for name, state in checks.items()}
    response = JsonResponse(
        {"status": "ok" if healthy else "degraded", "checks": checks}, status=200 if healthy else 503
    )
    # A load balancer probes every second or so: Django would log each 503 as an ERROR
    # ("Service Unavailable"). log_changes() has said what went down, once; mark it as logged.
    response._has_been_logged = True
    return response


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Serve this process's metrics in Prometheus text format, to staff unless METRICS_PUBLIC."""
    if not settings.METRICS_PUBLIC and not (request.user.is_authenticated and request.user.is_staff):
        return HttpResponse(
            "Metrics are for staff; set METRICS_PUBLIC=1 to open them.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


@functools.cache
def favicon_bytes() -> bytes:
    with open(finders.find(FAVICON), "rb") as file:
        return file.read()


@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    """Serve the icon at /favicon.ico, where browsers and tools look for it whatever the page says."""
    return HttpResponse(favicon_bytes(), content_type="image/svg+xml")


@csrf_exempt  # checked below, once the caller is known to be signed in, so that every answer is JSON
@never_cache
def token(request: HttpRequest) -> JsonResponse:
    """Issue a token for the signed-in user: POST (CSRF-checked as any session POST), an optional
    ``ttl`` in a JSON or form body; answers {"token", "expires_at", "ttl"}."""
    if request.method != "POST":
        response = json_error(405, "POST to /token to get a token")
        response["Allow"] = "POST"
        return response
    if not request.user.is_authenticated:
        return json_error(403, "sign in first: tokens are issued to a signed-in session")
    if CsrfViewMiddleware(lambda request: None).process_view(request, None, (), {}) is not None:
        why = "CSRF check failed: send the csrftoken cookie's value in an X-CSRFToken header"
        return json_error(403, why)
    try:
        ttl = tokens.check_ttl(requested_ttl(request))
    except (tokens.InvalidTTL, ValueError) as error:
        return json_error(400, str(error))
    issued, expires_at = tokens.issue(request.user, ttl)
    return JsonResponse({"token": issued, "expires_at": expires_at.isoformat(), "ttl": ttl})


def requested_ttl(request: HttpRequest) -> object:
    """Return the ttl a JSON or form body asks for, or None; raise ValueError for a bad JSON body."""
    if request.content_type == "application/json":
        if not request.body.strip():
            return None
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise ValueError('the body must be a JSON object, e.g. {"ttl": 600}')
        return body.get("ttl")
    return request.POST.get("ttl") or None


def json_error(status: int, error: str) -> JsonResponse:
    return JsonResponse({"error": error}, status=status)
