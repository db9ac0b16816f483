"""HTTP views: the page at / and the answer to a plain GET on a WebSocket route."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

UPGRADE_REQUIRED = "This is a WebSocket endpoint: a WebSocket upgrade is required.\n"


def index(request: HttpRequest) -> HttpResponse:
    """Show the chat page."""
    return render(request, "echo/index.html")


def upgrade_required(request: HttpRequest) -> HttpResponse:
    """Tell a plain HTTP client that this URL speaks WebSocket only."""
    response = HttpResponse(UPGRADE_REQUIRED, status=400, content_type="text/plain; charset=utf-8")
    response["Upgrade"] = "websocket"
    return response
