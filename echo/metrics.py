"""Prometheus metrics of this process, served at /metrics (echo.views.metrics)."""

import gc

from prometheus_client import Counter, Gauge, Histogram

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
gc_pauses = Histogram(
    "echo_gc_pause_seconds",
    "Garbage collections of this process, by how long each stopped it.",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
gc_frozen = Gauge(
    "echo_gc_frozen_objects",
    "Objects out of the garbage collector's sight (project/gc_policy.py): start-up's and long-lived ones.",
)
gc_frozen.set_function(gc.get_freeze_count)
