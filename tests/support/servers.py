"""RabbitMQ and PostgreSQL servers of a test's own, which it may stop, kill and restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cli.processes import free_port
from tests.support.bus import unavailable, wait_for


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    with contextlib.suppress(OSError):
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    return False


def _chown(path: Path, user: str) -> None:
    shutil.chown(path, user, user)
    for child in path.rglob("*"):
        shutil.chown(child, user, user)


def consumers_of(
    queue: str, node: str | None = None, env: dict[str, str] | None = None
) -> int | None:
    """The consumers of `queue` on a local node, by rabbitmqctl (AMQP's consumer count shows
    only the active one of a single-active-consumer queue); None if rabbitmqctl did not answer."""
    command = ["rabbitmqctl", "-q", "list_consumers", "--no-table-headers", "queue_name"]
    if node is not None:
        command[1:1] = ["-n", node]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, check=True, timeout=20
        )
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None
    return sum(1 for line in done.stdout.splitlines() if line.strip() == queue)


def one_consumer(queue: str, node: str | None = None, env: dict[str, str] | None = None) -> None:
    """Wait until `queue` has exactly one consumer (a reconnect may still be settling)."""
    wait_for(
        lambda: consumers_of(queue, node, env) == 1, timeout=60, what=f"one consumer on {queue}"
    )


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of the test's own: its own name, ports and data directory."""

    root: Path
    name: str
    port: int
    dist_port: int
    tls_port: int | None = None
    #: The management plugin's HTTP port, when the node runs it.
    management_port: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        """amqps:// on the TLS listener, verifying the test CA's certificate for `localhost`."""
        assert self.tls_port is not None
        return f"amqps://guest:guest@localhost:{self.tls_port}/?cafile={self.root / 'ca.pem'}"

    @property
    def management_url(self) -> str:
        assert self.management_port is not None
        return f"http://guest:guest@127.0.0.1:{self.management_port}/"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            # Erlang terms for what rabbitmq.conf cannot say (an empty list when unused).
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
        }

    def start(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env(), check=True, timeout=30)
        wait_for(lambda: port_open(self.port), timeout=60, what=f"RabbitMQ {self.name} to listen")
        if self.management_port is not None:
            port = self.management_port
            wait_for(lambda: port_open(port), timeout=60, what=f"{self.name}'s management API")

    def _signal(self, sig: int) -> None:
        # A signal to the node's own pid: no CLI tool, no Erlang distribution involved.
        pid = int((self.root / "pid").read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_for(lambda: not _pid_alive(pid), timeout=60, what=f"RabbitMQ {self.name} to exit")

    def one_consumer(self, queue: str) -> None:
        """Wait until `queue` has exactly one consumer on this node."""
        one_consumer(queue, self.name, self.env())

    def stop(self) -> None:
        """A clean shutdown (RabbitMQ stops gracefully on SIGTERM)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the node, as a crash would."""
        self._signal(signal.SIGKILL)

    @classmethod
    def create(
        cls, tls: bool = False, management: bool = False, config: str = "", advanced: str = ""
    ) -> PrivateRabbit:
        """A node not started yet. `config`: more lines of rabbitmq.conf; `advanced`: settings
        of the `rabbit` application as Erlang terms, e.g. `{channel_tick_interval, 1000}`."""
        if shutil.which("rabbitmq-server") is None:
            unavailable("a private RabbitMQ node", "rabbitmq-server is not installed")
        root = Path(tempfile.mkdtemp(prefix="convbus-rmq-"))
        port, dist = free_port(), free_port()
        (root / "mnesia").mkdir()
        (root / "log").mkdir()
        (root / "enabled_plugins").write_text("[rabbitmq_management].\n" if management else "[].\n")
        settings = f"listeners.tcp.local = 127.0.0.1:{port}\n"
        management_port = None
        if management:
            management_port = free_port()
            # Queue statistics every 0.5 s (default 5 s), so that tests wait less for them.
            settings += (
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"
                "collect_statistics_interval = 500\nmanagement.rates_mode = none\n"
            )
        tls_port = None
        if tls:
            tls_port = free_port()
            _make_certificates(root)
            settings += (
                f"listeners.ssl.local = 127.0.0.1:{tls_port}\n"
                f"ssl_options.cacertfile = {root / 'ca.pem'}\n"
                f"ssl_options.certfile = {root / 'server.pem'}\n"
                f"ssl_options.keyfile = {root / 'server.key'}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        (root / "rabbitmq.conf").write_text(settings + config)
        (root / "advanced.config").write_text(f"[{{rabbit, [{advanced}]}}].\n")
        root.chmod(0o755)
        with contextlib.suppress(KeyError, PermissionError):
            _chown(root, "rabbitmq")  # the server drops to this user; it must own its files
        name = f"convbus-{uuid.uuid4().hex[:8]}@localhost"
        return cls(root, name, port, dist, tls_port, management_port)


def _make_certificates(root: Path) -> None:
    """A throwaway CA and a server certificate for localhost, made with openssl."""
    if shutil.which("openssl") is None:
        unavailable("TLS certificates", "openssl is not installed")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=convbus-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (root / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "san.cnf")  # fmt: skip


PG_BIN = Path("/usr/lib/postgresql")


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temp dir), run as `postgres`."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.data),
             *args],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    @property
    def bin(self) -> Path:
        return sorted(PG_BIN.glob("*/bin"))[-1]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        self._pg_ctl("-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                     "-l", str(self.root / "log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    @classmethod
    def create(cls) -> PrivatePostgres:
        if not PG_BIN.exists() or shutil.which("runuser") is None:
            unavailable("a private PostgreSQL", "no /usr/lib/postgresql or runuser here")
        root = Path(tempfile.mkdtemp(prefix="convbus-pg-"))
        root.chmod(0o755)
        _chown(root, "postgres")
        server = cls(root, free_port())
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(server.bin / "initdb"), "-D",
             str(server.data), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return server


@dataclass
class RabbitCluster:
    """Three private RabbitMQ nodes joined in one cluster (their own ports and directories)."""

    nodes: list[PrivateRabbit]

    @property
    def url(self) -> str:
        """RELAY_AMQP_URL naming every node."""
        return ",".join(node.url for node in self.nodes)

    def ctl(self, node: PrivateRabbit, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-n", node.name, *args],
            env=node.env(), capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    def start(self) -> None:
        for node in self.nodes:  # at once: each takes seconds
            subprocess.run(["rabbitmq-server", "-detached"], env=node.env(), check=True, timeout=30)
        for node in self.nodes:
            wait_for(lambda n=node: port_open(n.port), timeout=90, what=f"{node.name} to listen")
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")

    def leader(self, queue: str, asking: PrivateRabbit) -> PrivateRabbit:
        """The node that leads the quorum queue `queue`, as the node `asking` sees it."""
        rows = json.loads(self.ctl(asking, "list_queues", "name", "leader", "--formatter", "json"))
        name = next(row["leader"] for row in rows if row["name"] == queue)
        return next(node for node in self.nodes if node.name == name)

    def restart(self, node: PrivateRabbit) -> None:
        """Start a stopped or killed node again; it rejoins the cluster by itself. Returns once
        every quorum queue has its members back (as RabbitMQ's guide for restarting nodes one
        by one says): a node booted may still be catching its queues up, and another node lost
        meanwhile would leave them without a quorum."""
        node.start()
        self.ctl(node, "await_startup")
        wait_for(self.redundant, timeout=90, interval=0.5, what="every quorum queue's members")

    def redundant(self) -> bool:
        """Whether any one node could stop and leave every quorum queue its quorum."""
        for node in self.nodes:
            done = subprocess.run(
                ["rabbitmq-queues", "-n", node.name, "check_if_node_is_quorum_critical"],
                env=node.env(), capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                return False
        return True

    def stop_all(self) -> None:
        for node in self.nodes:
            if port_open(node.port):
                with contextlib.suppress(Exception):
                    node.stop()
            shutil.rmtree(node.root, ignore_errors=True)

    @classmethod
    def create(cls, size: int = 3) -> RabbitCluster:
        return cls([PrivateRabbit.create() for _ in range(size)])
