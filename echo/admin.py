"""The admin: compose and review broadcasts, see and disconnect live connections."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html

from echo import api_keys, services
from echo.models import ApiKey, Broadcast, Connection


class BroadcastForm(forms.ModelForm):
    """The text, and whom it is for: a group, or one user (every connection of theirs)."""

    user = forms.CharField(
        required=False,
        max_length=150,
        help_text="Or a username: every connection of that user gets it (leave group as 'all').",
    )

    class Meta:
        model = Broadcast
        fields = ["text", "group", "user"]
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

    def clean_user(self):
        name = self.cleaned_data["user"].strip()
        if not name:
            return None
        try:
            return services.find_user(name)
        except services.InvalidBroadcast as error:
            raise ValidationError(str(error)) from None

    def clean(self) -> dict:
        cleaned = super().clean()
        group, user = cleaned.get("group"), cleaned.get("user")
        if user is not None and group not in (None, services.ALL_GROUP):
            raise ValidationError(
                f"Give a group or a user, not both: set group to {services.ALL_GROUP!r} to send to {user}."
            )
        return cleaned


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class DeliveryFilter(admin.SimpleListFilter):
    """Broadcasts Redis took, or refused (their sender was told; no client ever got them)."""

    title = "delivery"
    parameter_name = "delivery"

    def lookups(self, request, model_admin):
        return [("sent", "sent"), ("refused", "refused by Redis")]

    def queryset(self, request, queryset):
        if self.value() in ("sent", "refused"):
            return queryset.filter(pushed=self.value() == "sent")
        return queryset


class SenderFilter(admin.RelatedFieldListFilter):
    """Filter by sender; broadcasts without one (the command, your code) under "server"."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.empty_value_display = SERVER_SENDER


# Groups named in a row of the connection list, and the characters shown of each; the rest are counted.
GROUPS_SHOWN = 3
GROUP_NAME_SHOWN = 20

# What clients see as the sender of a broadcast no user sent (Broadcast.sender_name).
SERVER_SENDER = "server"


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):
    """Saving a new broadcast sends it; sent broadcasts are history and cannot be changed."""

    form = BroadcastForm
    list_display = ["id", "text", "kind", "group", "recipient", "sent_by", "sent_at", "delivery"]
    list_display_links = ["id", "text"]
    list_filter = [DeliveryFilter, "kind", "group", "sent_at", ("sender", SenderFilter)]
    search_fields = ["text", "group", "sender__username", "sender_label", "recipient__username"]
    date_hierarchy = "sent_at"
    readonly_fields = ["kind", "recipient", "sent_by", "sent_at", "delivery"]

    @admin.display(description="sender", ordering="sender")
    def sent_by(self, obj: Broadcast) -> str:
        return obj.sender_name

    @admin.display(description="delivery", ordering="pushed")
    def delivery(self, obj: Broadcast) -> str:
        # Text, not only an icon: it must read apart at a glance and in a screen reader.
        if obj.pushed:
            return "sent"
        return format_html('<strong style="color: var(--error-fg)">{}</strong>', "not sent: refused by Redis")

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["text", "group", "user"]
        return ["text", "kind", "group", "recipient", "sent_by", "sent_at", "delivery"]

    def save_model(self, request, obj: Broadcast, form, change: bool) -> None:
        user = form.cleaned_data.get("user")
        group = services.ALL_GROUP if user is not None else obj.group
        try:
            sent = services.broadcast_send(text=obj.text, group=group, user=user, sender=request.user)
        except services.BroadcastNotSent as error:
            obj.pk = error.broadcast.pk
            self.message_user(request, f"Not sent: {error}", messages.ERROR)
            return
        obj.pk = sent.pk
        if user is not None:
            live = services.live_connections(user=user).count()
            to, there = f"user {user.get_username()!r}", "of theirs"
        else:
            live = services.live_connections(group=sent.group).count()
            to, there = f"group {sent.group!r}", "there"
        self.message_user(
            request,
            f"Broadcast #{sent.position} sent to {to} ({live} live connection(s) {there}).",
            messages.SUCCESS,
        )

    def response_add(self, request, obj, post_url_continue=None):
        # save_model has said what happened; Django's "was added successfully" would not be true.
        return HttpResponseRedirect(reverse("admin:echo_broadcast_changelist"))


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    """Live connections of every process, read-only; the one action is to disconnect them."""

    # The list fits a 1280-pixel screen beside the admin's navigation: no filter sidebar (the
    # search finds a process or a protocol too), a few groups named, the time of day for
    # the date and host:pid for the process (hover either for the whole).
    list_display = ["id", "user_link", "peer", "group_list", "protocol", "since", "host_pid"]
    search_fields = [
        "id",
        "peer",
        "user__username",
        "groups",
        "user_agent",
        "process__id",
        "protocol",
        "path",
    ]
    actions = ["disconnect_selected"]

    def get_queryset(self, request):
        return services.live_connections().select_related("user", "process")

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj: Connection) -> str:
        # The filter by user: a link to this list with only that user's connections (?user=<pk>),
        # in place of a filter sidebar the list has no room for.
        if obj.user is None:
            return "-"
        name = obj.user.get_username()
        title = f"Only {name}'s connections"
        return format_html('<a href="?user={}" title="{}">{}</a>', obj.user_id, title, name)

    @admin.display(description="groups", ordering="groups")
    def group_list(self, obj: Connection) -> str:
        names = obj.groups.split(",") if obj.groups else []
        shown = ", ".join(shorten(name, GROUP_NAME_SHOWN) for name in names[:GROUPS_SHOWN])
        more = f" and {len(names) - GROUPS_SHOWN} more" if len(names) > GROUPS_SHOWN else ""
        return format_html('<span title="{}">{}{}</span>', ", ".join(names), shown, more)

    @admin.display(description="process", ordering="process")
    def host_pid(self, obj: Connection) -> str:
        host_and_pid = ":".join(obj.process_id.split(":")[:2])  # PresenceRegistry: host:pid:random
        return format_html('<span title="{}">{}</span>', obj.process_id, shorten(host_and_pid, 24))

    @admin.display(description="since", ordering="connected_at")
    def since(self, obj: Connection) -> str:
        local = timezone.localtime(obj.connected_at)
        full = date_format(local, "DATETIME_FORMAT")
        if local.date() == timezone.localdate():
            return format_html('<span title="{}">{}</span>', full, local.strftime("%H:%M:%S"))
        return full

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


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys for the HTTP API (echo.api): made here, the key shown once after saving; revoked by the action."""

    list_display = ["name", "key_prefix", "permission", "created_at", "created_by", "last_used_at", "revoked"]
    list_filter = ["permission", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    actions = ["revoke_selected"]

    @admin.display(description="key", ordering="prefix")
    def key_prefix(self, obj: ApiKey) -> str:
        return f"{obj.prefix}..."

    @admin.display(description="revoked", ordering="revoked_at")
    def revoked(self, obj: ApiKey) -> str:
        return date_format(timezone.localtime(obj.revoked_at), "DATETIME_FORMAT") if obj.revoked_at else "-"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "permission"]
        return ["name", "permission", "key_prefix", "created_at", "created_by", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["key_prefix", "created_at", "created_by", "last_used_at", "revoked_at"]

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key = api_keys.fill(obj)
        obj.created_by = request.user
        super().save_model(request, obj, form, change)
        # The only time the key is shown: only its digest is kept.
        self.message_user(
            request,
            format_html(
                "The key of {}: <code>{}</code> Copy it now: it is not shown again. "
                "Send it as the header <code>Authorization: Bearer KEY</code>.",
                obj.name,
                key,
            ),
            messages.WARNING,
        )

    @admin.action(permissions=["change"], description="Revoke selected keys")
    def revoke_selected(self, request, queryset) -> None:
        count = api_keys.revoke(queryset)
        self.message_user(request, f"Revoked {count} key(s): the API refuses them now.", messages.SUCCESS)
