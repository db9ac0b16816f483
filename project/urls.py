from django.contrib import admin
from django.urls import path

from echo import views

urlpatterns = [
    path("", views.index, name="index"),
    path("ws/", views.upgrade_required, name="ws"),
    path("ws/raw/", views.upgrade_required, name="ws-raw"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]
