"""What the server keeps: broadcasts sent, and the live connections of every Daphne process."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class Broadcast(models.Model):
    """A push to every connection of a group or of one user: the push log's history.

    Two kinds: a broadcast (from the server: the command, the admin, the HTTP API) and a room
    message (a client's ``say`` in echo.json, naming the person who said it).
    """

    BROADCAST = "broadcast"
    MESSAGE = "message"
    KINDS = [(BROADCAST, "broadcast"), (MESSAGE, "room message")]

    # Its place in the push log (echo.pushlog): the order every client gets pushes in, and the id
    # they see and resume from. None when Redis refused it.
    position = models.BigIntegerField(null=True, blank=True, unique=True)
    text = models.TextField()
    kind = models.CharField(max_length=10, choices=KINDS, default=BROADCAST)
    # Where it goes: a group's name, or services.user_group() of its recipient ("user:<pk>").
    group = models.CharField(max_length=90, default="all", db_index=True)
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Set for a push to one user: every connection of theirs gets it.",
    )
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who sent it when that is not a user: a guest in a room ("guest-1f2e3d4c"), an API key.
    sender_label = models.CharField(max_length=150, blank=True)
    sent_at = models.DateTimeField(default=timezone.now, db_index=True)
    # False when Redis refused it: the sender was told, and no client ever gets it.
    pushed = models.BooleanField(default=True, help_text="False if Redis refused it: nobody got it.")

    class Meta:
        ordering = ["-sent_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.position or '-'} to {self.group}: {self.text[:50]}"

    @property
    def sender_name(self) -> str:
        if self.sender:
            return self.sender.get_username()
        return self.sender_label or "server"

    def push(self) -> dict:
        """Return what the push log carries of this broadcast (echo.pushlog)."""
        return {
            "kind": self.kind,
            "group": self.group,
            "text": self.text,
            "sender": self.sender_name,
            "sent_at": self.sent_at.isoformat(),
        }


class ServerProcess(models.Model):
    """A Daphne process that holds connections; it proves it is alive by its heartbeat."""

    id = models.CharField(primary_key=True, max_length=64)
    started_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.id


class Connection(models.Model):
    """One live WebSocket connection, as its process last reported it."""

    id = models.CharField(primary_key=True, max_length=16, verbose_name="connection id")
    process = models.ForeignKey(ServerProcess, on_delete=models.CASCADE, related_name="connections")
    channel_name = models.CharField(max_length=200)
    path = models.CharField(max_length=200)
    groups = models.CharField(max_length=1000, blank=True, help_text="Comma-separated group names.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    peer = models.CharField(max_length=100)
    user_agent = models.CharField(max_length=300, blank=True)
    protocol = models.CharField(max_length=50, blank=True, help_text="The subprotocol, if any.")
    connected_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-connected_at"]
        permissions = [("disconnect_connection", "Can disconnect live connections")]

    def __str__(self) -> str:
        return f"{self.id} ({self.peer})"


class ApiKey(models.Model):
    """A key another service presents to the HTTP API (echo.api); only its digest is kept."""

    PUBLISH = "publish"
    READ = "read"
    PERMISSIONS = [
        (PUBLISH, "publish, and read history and presence"),
        (READ, "read history and presence only"),
    ]

    name = models.CharField(max_length=100, help_text="Who uses it: a service, a job, a webhook.")
    # The key's first characters, shown in the admin and in log lines to tell keys apart.
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    # SHA-256 of the whole key: keys are long and random, so a fast hash is enough.
    digest = models.CharField(max_length=64, unique=True, editable=False)
    permission = models.CharField(max_length=10, choices=PERMISSIONS, default=PUBLISH)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, help_text="Set to revoke the key.")

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}...)"
