"""Prometheus metrics of this process, served at /metrics (echo.views.metrics)."""

from prometheus_client import Counter, Gauge

connections_open = Gauge("echo_connections_open", "WebSocket connections open on this process.")
messages_received = Counter("echo_messages_received", "WebSocket messages received from clients.")
messages_sent = Counter("echo_messages_sent", "WebSocket messages sent to clients.")
broadcasts = Counter("echo_broadcasts", "Broadcasts sent from this process, by result.", ["result"])
broadcasts_sent = broadcasts.labels(result="sent")
broadcasts_failed = broadcasts.labels(result="failed")
overflow_drops = Counter(
    "echo_channel_layer_overflow_drops", "Channel-layer messages dropped because a consumer fell behind."
)
channel_layer_errors = Counter(
    "echo_channel_layer_errors", "Errors reaching Redis from the channel layer (an outage counts each retry)."
)
slow_client_closes = Counter(
    "echo_slow_client_closes", "Connections closed because they stopped reading what was sent to them."
)
push_log_members = Gauge(
    "echo_push_log_members", "Group memberships the push-log tail of this process delivers to."
)
