"""What the server keeps: broadcasts sent, and the live connections of every Daphne process."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class Broadcast(models.Model):
    """A message pushed by the server to every connection of a group: the push log's history."""

    # Its place in the push log (echo.pushlog): the order every client gets pushes in, and the id
    # they see and resume from. None when Redis refused it.
    position = models.BigIntegerField(null=True, blank=True, unique=True)
    text = models.TextField()
    group = models.CharField(max_length=90, default="all", db_index=True)
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sent_at = models.DateTimeField(default=timezone.now, db_index=True)
    # False when Redis refused it: the sender was told, and no client ever gets it.
    pushed = models.BooleanField(default=True, help_text="False if Redis refused it: nobody got it.")

    class Meta:
        ordering = ["-sent_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.position or '-'} to {self.group}: {self.text[:50]}"

    @property
    def sender_name(self) -> str:
        return self.sender.get_username() if self.sender else "server"

    def push(self) -> dict:
        """Return what the push log carries of this broadcast (echo.pushlog)."""
        return {
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
