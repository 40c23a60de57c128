"""A throwaway Redis Cluster on loopback for tests: N primaries, R replicas each.

What :meth:`LocalRedisCluster.start` guarantees when it returns:

- every node is a ``redis-server`` child of this process, listening on 127.0.0.1 only, with its
  own directory (AOF, ``nodes-<port>.conf``, log) under one temporary directory;
- the client port and the cluster-bus port of every node were both free when chosen (the bus
  port is passed with ``--cluster-port``, so it is never ``port + 10000``, which can exceed 65535
  for a port from the ephemeral range); this needs redis-server 7.0 or later;
- every node reports ``cluster_state:ok``, all 16384 slots assigned, and knows every other node;
  every replica's replication link to its primary is up (so ``WAIT 1`` can be satisfied and a
  promotion has data to promote).

Otherwise it raises :class:`ClusterError` carrying the tail of every node's log, after stopping
the nodes it started. Every wait is bounded in iterations and in time. :meth:`stop` ends every
node (SIGTERM, then SIGKILL) and deletes the directory; it is idempotent, and the context manager
calls it. On Linux the nodes also receive SIGTERM if the process that started them dies
(``PR_SET_PDEATHSIG``), so a killed test run leaves no node behind.

The options that make a failover quick and deterministic (see :data:`NODE_OPTIONS`):

- ``--cluster-node-timeout`` (2000 ms by default): a primary unreachable for that long is
  suspected, marked failed once most primaries agree, and then its replica is elected (Redis adds
  a 500-1000 ms election delay). A failover takes about node timeout + 1-2 s.
- ``--cluster-replica-validity-factor 0``: a replica always stands for election, however long
  ago it last heard from its primary (the default 10 lets a replica with "too old" data refuse,
  which on a slow machine can leave the slot without a primary).
- ``--cluster-allow-replica-migration no``: replicas never move to a primary left without one,
  so the topology after a failover is exactly what the test caused.
- ``--repl-diskless-sync-delay 0``: a primary starts a replica's full sync at once instead of
  waiting 5 s for more replicas to join (that delay would be paid at every start).
- ``--appendonly yes`` (``--save ""``): what a node acknowledged survives :meth:`restart`.
- ``--shutdown-on-sigterm "now force"``: SIGTERM ends a node at once: a primary does not wait
  for lagging replicas, and a replica writing its initial AOF after a full sync (just after
  :meth:`restart`) exits instead of logging "Writing initial AOF, can't exit" and running on.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import redis
from redis.crc import key_slot

HOST = "127.0.0.1"
SLOTS = 16384
DEFAULT_NODE_TIMEOUT_MS = 2000

# Every node gets these on top of its port, bus port, directory and node timeout.
NODE_OPTIONS: tuple[str, ...] = (
    "--bind", HOST,
    "--cluster-enabled", "yes",
    "--cluster-replica-validity-factor", "0",
    "--cluster-allow-replica-migration", "no",
    "--repl-diskless-sync-delay", "0",
    "--appendonly", "yes",
    "--save", "",
    "--shutdown-on-sigterm", "now force",
    "--daemonize", "no",
)  # fmt: skip

_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL_S = 0.05
_LOG_LINES = 25

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster did not reach the state asked for in time (the message has the nodes' logs)."""


class _NotYet(Exception):
    """A probe's condition does not hold yet; the message says what is missing."""


def missing_binaries() -> list[str]:
    """The programs this module needs that are not on PATH."""
    return [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free (all held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def slot_of(slot_or_key: int | str) -> int:
    """A slot number as is, or the slot of a key (the same CRC16 rule as ``CLUSTER KEYSLOT``)."""
    if isinstance(slot_or_key, int):
        if not 0 <= slot_or_key < SLOTS:
            raise ValueError(f"slot {slot_or_key} is not in 0..{SLOTS - 1}")
        return slot_or_key
    return key_slot(slot_or_key.encode())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _poll(probe: Callable[[], T], *, what: str, timeout_s: float, details: Callable[[], str]) -> T:
    """``probe()``'s value once it stops raising :class:`_NotYet` (or a connection error).

    Bounded twice: at most ``timeout_s / interval + 1`` probes, and no new probe after the
    deadline. On timeout raises :class:`ClusterError` with the last reason and ``details()``.
    """
    deadline = time.monotonic() + timeout_s
    reason = "never probed"
    for _ in range(math.ceil(timeout_s / _POLL_INTERVAL_S) + 1):
        try:
            return probe()
        except (_NotYet, redis.ConnectionError, redis.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL_S)
    raise ClusterError(f"{what}: not reached within {timeout_s:.1f}s ({reason})\n{details()}")


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES``: how the answering node sees a node."""

    node_id: str
    address: str
    flags: frozenset[str]
    primary_id: str | None
    slot_ranges: tuple[tuple[int, int], ...]

    @property
    def is_failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slot_ranges)


def _slot_range(token: str) -> tuple[int, int]:
    first, _, last = token.partition("-")
    return int(first), int(last or first)


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """``CLUSTER NODES`` output; slots being imported/migrated (``[..]`` entries) are ignored."""
    views = []
    for line in text.strip().splitlines():
        fields = line.split()
        views.append(
            NodeView(
                node_id=fields[0],
                address=fields[1].split("@", 1)[0],
                flags=frozenset(fields[2].split(",")),
                primary_id=None if fields[3] == "-" else fields[3],
                slot_ranges=tuple(_slot_range(t) for t in fields[8:] if not t.startswith("[")),
            )
        )
    return views


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


@contextlib.contextmanager
def _connect(port: int) -> Iterator[redis.Redis]:
    client = redis.Redis(
        host=HOST, port=port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True
    )
    try:
        yield client
    finally:
        client.close()


def _command_text(port: int, *args: str) -> str:
    """A command's raw text answer (``"CLUSTER", "INFO"`` split so no client parser applies)."""
    with _connect(port) as client:
        answer = client.execute_command(*args)  # type: ignore[no-untyped-call]
    assert isinstance(answer, str), answer
    return answer


def cluster_info(port: int) -> dict[str, str]:
    return _parse_info(_command_text(port, "CLUSTER", "INFO"))


def cluster_nodes(port: int) -> list[NodeView]:
    return parse_cluster_nodes(_command_text(port, "CLUSTER", "NODES"))


def replication_info(port: int) -> dict[str, str]:
    with _connect(port) as client:
        info = client.info("replication")
    return {key: str(value) for key, value in info.items()}


@dataclass
class _Node:
    port: int
    bus_port: int
    directory: Path
    node_timeout_ms: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on PATH"
        return [
            binary,
            "--port", str(self.port),
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            *NODE_OPTIONS,
        ]  # fmt: skip

    def spawn(self) -> None:
        assert not self.running, f"{self.address} is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def signal_stop(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    def reap(self, timeout_s: float) -> None:
        """Wait for the process to end; SIGKILL it if it takes longer than ``timeout_s``."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_tail(self, lines: int = _LOG_LINES) -> str:
        texts = []
        for name in ("stdout.log", "redis.log"):
            path = self.directory / name
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        state = "running" if self.running else f"exited ({self.process and self.process.poll()})"
        return f"--- {self.address} ({state})\n" + "\n".join(texts)


class LocalRedisCluster:
    """A Redis Cluster of child processes; see the module docstring for what it guarantees."""

    def __init__(self, nodes: Sequence[_Node], root: Path) -> None:
        self._nodes = list(nodes)
        self._root = root

    # -- starting and stopping --------------------------------------------------------------

    @classmethod
    def start(
        cls,
        primaries: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        timeout_s: float = 30.0,
    ) -> LocalRedisCluster:
        """Start ``primaries * (1 + replicas)`` nodes and join them into one cluster."""
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        count = primaries * (1 + replicas)
        ports = free_ports(2 * count)
        root = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        nodes = [
            _Node(port, bus_port, root / str(port), node_timeout_ms)
            for port, bus_port in zip(ports[:count], ports[count:], strict=True)
        ]
        cluster = cls(nodes, root)
        try:
            cluster._boot(replicas, timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _boot(self, replicas: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for node in self._nodes:
            node.spawn()
        for node in self._nodes:
            self._wait_until_answering(node, deadline - time.monotonic())
        self._create(replicas, deadline - time.monotonic())
        self.wait_until_ready(timeout_s=max(deadline - time.monotonic(), 1.0))

    def _create(self, replicas: int, timeout_s: float) -> None:
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is not on PATH"
        args = [cli, "--cluster", "create", *self.addresses, "--cluster-replicas", str(replicas)]
        try:
            done = subprocess.run(
                [*args, "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=max(timeout_s, 1.0),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"redis-cli --cluster create timed out\n{self.logs()}") from exc
        if done.returncode != 0:
            output = done.stdout + done.stderr
            raise ClusterError(f"redis-cli --cluster create failed:\n{output}\n{self.logs()}")

    def stop(self) -> None:
        """End every node (SIGTERM, SIGKILL after 5 s) and delete the cluster's directory."""
        for node in self._nodes:
            node.signal_stop(signal.SIGTERM)
        for node in self._nodes:
            node.reap(timeout_s=5.0)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it looks like -----------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every node's ``host:port``, running or not, in start order."""
        return [node.address for node in self._nodes]

    @property
    def live_addresses(self) -> list[str]:
        return [node.address for node in self._nodes if node.running]

    @property
    def url(self) -> str:
        """A startup URL: the first node's (it may be down after :meth:`kill_master_of`)."""
        return f"redis://{self._nodes[0].address}"

    def logs(self) -> str:
        return "\n".join(node.log_tail() for node in self._nodes)

    def primary_of(self, slot_or_key: int | str) -> str:
        """The address of the primary serving a slot (or a key's slot), as every live node says."""
        return self._agreed_primary(slot_of(slot_or_key), excluded=None)

    def role(self, address: str) -> str:
        """``master`` or ``slave``, as the node itself says (``INFO replication``)."""
        return replication_info(self._node(address).port)["role"]

    # -- waiting ----------------------------------------------------------------------------

    def wait_until_ready(self, *, timeout_s: float = 30.0) -> None:
        """Every live node: cluster ok, all slots assigned, all nodes known, replica links up."""
        _poll(self._readiness, what="cluster ready", timeout_s=timeout_s, details=self.logs)

    def wait_for_failover(
        self, slot_or_key: int | str, old_primary: str, *, timeout_s: float = 30.0
    ) -> str:
        """Wait until every live node names one new primary for the slot and reports ok.

        Returns the new primary's address.
        """
        slot = slot_of(slot_or_key)

        def promoted() -> str:
            self._readiness(check_replica_links=False)
            return self._agreed_primary(slot, excluded=old_primary)

        return _poll(
            promoted, what=f"failover of slot {slot}", timeout_s=timeout_s, details=self.logs
        )

    # -- breaking and repairing -------------------------------------------------------------

    def kill_master_of(self, slot_or_key: int | str) -> str:
        """SIGKILL the primary serving a slot (or a key's slot); returns its address."""
        node = self._node(self.primary_of(slot_or_key))
        node.signal_stop(signal.SIGKILL)
        node.reap(timeout_s=5.0)
        return node.address

    def restart(self, address: str, *, timeout_s: float = 30.0) -> None:
        """Start a stopped node again with its own config and AOF, and wait until it has rejoined.

        A primary that lost its slots to a failover comes back as a replica of the new primary.
        """
        node = self._node(address)
        node.spawn()
        deadline = time.monotonic() + timeout_s
        self._wait_until_answering(node, timeout_s)
        self.wait_until_ready(timeout_s=max(deadline - time.monotonic(), 1.0))

    # -- internals --------------------------------------------------------------------------

    def _node(self, address: str) -> _Node:
        for node in self._nodes:
            if node.address == address:
                return node
        raise KeyError(f"{address} is not a node of this cluster ({self.addresses})")

    def _live_nodes(self) -> list[_Node]:
        return [node for node in self._nodes if node.running]

    def _wait_until_answering(self, node: _Node, timeout_s: float) -> None:
        def answers() -> None:
            if not node.running:
                raise ClusterError(f"{node.address} exited\n{node.log_tail()}")
            with _connect(node.port) as client:
                client.ping()

        _poll(
            answers,
            what=f"{node.address} answering",
            timeout_s=max(timeout_s, 1.0),
            details=self.logs,
        )

    def _readiness(self, *, check_replica_links: bool = True) -> None:
        """Raise :class:`_NotYet` naming the first live node that is not ready."""
        live = self._live_nodes()
        if not live:
            raise ClusterError(f"no node is running\n{self.logs()}")
        for node in live:
            info = cluster_info(node.port)
            if info.get("cluster_state") != "ok":
                raise _NotYet(f"{node.address}: cluster_state:{info.get('cluster_state')}")
            if info.get("cluster_slots_assigned") != str(SLOTS):
                raise _NotYet(
                    f"{node.address}: {info.get('cluster_slots_assigned')} slots assigned"
                )
            if info.get("cluster_known_nodes") != str(len(self._nodes)):
                raise _NotYet(f"{node.address}: knows {info.get('cluster_known_nodes')} nodes")
            if check_replica_links:
                self._check_replica_link(node)

    @staticmethod
    def _check_replica_link(node: _Node) -> None:
        replication = replication_info(node.port)
        if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
            raise _NotYet(f"{node.address}: replica link {replication.get('master_link_status')}")

    def _agreed_primary(self, slot: int, *, excluded: str | None) -> str:
        """The one primary every live node says serves ``slot``; :class:`_NotYet` otherwise."""
        answers = {node.address: self._primary_seen_by(node, slot) for node in self._live_nodes()}
        named = set(answers.values())
        if len(named) != 1 or None in named or excluded in named:
            raise _NotYet(f"slot {slot}: primaries named {answers}")
        primary = named.pop()
        assert primary is not None
        return primary

    @staticmethod
    def _primary_seen_by(node: _Node, slot: int) -> str | None:
        for view in cluster_nodes(node.port):
            if view.is_primary and not view.is_failed and view.serves(slot):
                return view.address
        return None
