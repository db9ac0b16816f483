from django.contrib import admin
from django.urls import path, re_path

from echo import views
from echo.api import api

urlpatterns = [
    path("", views.index, name="index"),
    # With or without the slash, as the WebSocket routes (echo/routing.py): a redirect from /ws
    # to /ws/ would be no use to a WebSocket client.
    re_path(r"^ws/?$", views.upgrade_required, name="ws"),
    re_path(r"^ws/raw/?$", views.upgrade_required, name="ws-raw"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("token", views.token, name="token"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]
