"""The admin: compose and review broadcasts, see and disconnect live connections."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.urls import reverse

from echo import services
from echo.models import Broadcast, Connection


class BroadcastForm(forms.ModelForm):
    class Meta:
        model = Broadcast
        fields = ["text", "group"]
        help_texts = {"group": "Who gets it: 'all' for every connection, or a group's name."}

    def clean_text(self) -> str:
        try:
            return services.validate_broadcast_text(self.cleaned_data["text"])
        except services.InvalidBroadcast as error:
            raise ValidationError(str(error)) from None

    def clean_group(self) -> str:
        try:
            return services.validate_group_name(self.cleaned_data["group"])
        except services.InvalidGroupName as error:
            raise ValidationError(str(error)) from None


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):
    """Saving a new broadcast sends it; sent broadcasts are history and cannot be changed."""

    form = BroadcastForm
    list_display = ["id", "text", "group", "sender", "sent_at"]
    list_display_links = ["id", "text"]
    list_filter = ["group", "sent_at", "sender"]
    search_fields = ["text", "group", "sender__username"]
    date_hierarchy = "sent_at"
    readonly_fields = ["sender", "sent_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj: Broadcast, form, change: bool) -> None:
        try:
            sent = services.broadcast_send(text=obj.text, group=obj.group, sender=request.user)
        except services.BroadcastNotSent as error:
            obj.pk = error.broadcast.pk
            self.message_user(request, f"Not sent: {error}", messages.ERROR)
            return
        obj.pk = sent.pk
        live = services.live_connections(group=sent.group).count()
        self.message_user(
            request,
            f"Broadcast #{sent.pk} sent to group {sent.group!r} ({live} live connection(s) there).",
            messages.SUCCESS,
        )

    def response_add(self, request, obj, post_url_continue=None):
        # save_model has said what happened; Django's "was added successfully" would not be true.
        return HttpResponseRedirect(reverse("admin:echo_broadcast_changelist"))


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    """Live connections of every process, read-only; the one action is to disconnect them."""

    list_display = ["id", "user", "peer", "groups", "protocol", "connected_at", "process"]
    list_filter = ["process", "protocol", "path"]
    search_fields = ["id", "peer", "user__username", "groups", "user_agent"]
    actions = ["disconnect_selected"]

    def get_queryset(self, request):
        return services.live_connections().select_related("user", "process")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_disconnect_permission(self, request) -> bool:
        return request.user.has_perm("echo.disconnect_connection")

    @admin.action(permissions=["disconnect"], description="Disconnect the selected connections")
    def disconnect_selected(self, request, queryset) -> None:
        reason = f"disconnected by {request.user.get_username()}"
        count = services.disconnect(connections=queryset, reason=reason)
        self.message_user(request, f"Asked {count} connection(s) to close (code 4000).", messages.SUCCESS)
