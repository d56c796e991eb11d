"""Single-node Apache Kafka 4.x (KRaft, combined broker and controller) for tests and the demo.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` into a per-user cache outside
the work tree; the broker runs on Java 17+ on free 127.0.0.1 ports and keeps its log directory
across restarts, so a test can SIGKILL it, start it again on the same port and find its data.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

from streams.services import LOOPBACK, KafkaServer, Launch, ServiceError, free_port

log = logging.getLogger(__name__)

# The newest 4.x on Maven Central when this was written (checked with mvn dependency:get).
KAFKA_VERSION = "4.4.0"
MIN_JAVA = 17
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_NEEDS = f"Apache Kafka needs Java {MIN_JAVA}+ and Maven on PATH"

# Broker log: INFO, as in the Kafka distribution (start-up failures are explained at INFO).
_BROKER_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
"""


def kafka_cache_dir(version: str = KAFKA_VERSION) -> Path:
    """``$STREAMREC_KAFKA_CACHE/kafka-VERSION``, by default ``~/.cache/streamrec/kafka-VERSION``."""
    base = os.environ.get("STREAMREC_KAFKA_CACHE")
    if base:
        return Path(base).expanduser() / f"kafka-{version}"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "streamrec" / f"kafka-{version}"


def find_pom() -> Path:
    """``deploy/kafka/pom.xml`` of the source checkout (next to this package, or under the cwd)."""
    candidates = [
        Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "pom.xml",
        Path.cwd() / "deploy" / "kafka" / "pom.xml",
    ]
    for pom in candidates:
        if pom.is_file():
            return pom
    raise ServiceError(
        "the Apache Kafka jars are not cached yet and deploy/kafka/pom.xml was not found "
        f"(looked at {', '.join(map(str, candidates))}); run once from a streamrec checkout, or "
        "set STREAMREC_KAFKA_CACHE to a directory that already holds kafka-VERSION/libs"
    )


def find_java() -> Path:
    """A ``java`` of version 17 or newer: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is None or not os.access(candidate, os.X_OK):
        found = shutil.which("java")
        if found is None:
            raise ServiceError(
                f"{_NEEDS}: java not found (Debian: apt-get install openjdk-17-jre-headless), "
                "or use the Tansu broker"
            )
        candidate = Path(found)
    major = _java_major(str(candidate))
    if major < MIN_JAVA:
        raise ServiceError(f"{_NEEDS}: {candidate} is Java {major}; set JAVA_HOME to a newer one")
    return candidate


@functools.cache
def _java_major(java: str) -> int:
    try:
        out = subprocess.run(  # noqa: S603 - a java binary we located
            [java, "-version"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"{_NEEDS}: could not run {java} -version: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise ServiceError(
            f"{_NEEDS}: cannot read the version from {java} -version: {out.stderr!r}"
        )
    major = int(match.group(1))
    # Java 8 and older report themselves as 1.x.
    return int(match.group(2) or 0) if major == 1 else major


def ensure_kafka_libs(
    version: str = KAFKA_VERSION, cache_dir: Path | None = None, pom: Path | None = None
) -> Path:
    """Return the directory holding the broker's jars, fetching them with Maven on first use.

    Safe to call from concurrent processes: a file lock serialises the download and the jars
    appear under ``libs/`` only once complete.
    """
    root = cache_dir or kafka_cache_dir(version)
    libs = root / "libs"
    marker = libs / f"kafka_2.13-{version}.jar"
    if marker.is_file():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            f"{_NEEDS}: mvn not found, and it is needed once to fetch the Kafka {version} jars "
            f"into {libs} (Debian: apt-get install maven)"
        )
    pom = pom or find_pom()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():  # another process fetched them while we waited
            return libs
        log.info(
            "fetching Apache Kafka %s jars from Maven Central into %s (first run)", version, libs
        )
        partial = Path(tempfile.mkdtemp(dir=root, prefix="libs.partial-"))
        try:
            _run_maven(mvn, pom, version, partial)
            if not (partial / marker.name).is_file():
                raise ServiceError(f"Maven finished but {marker.name} is missing; check {pom}")
            shutil.rmtree(libs, ignore_errors=True)  # leftovers of an interrupted older layout
            partial.rename(libs)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return libs


def _run_maven(mvn: str, pom: Path, version: str, out_dir: Path) -> None:
    argv = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={out_dir}",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"Maven did not finish within 30 minutes: {' '.join(argv)}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise ServiceError(
            f"Maven could not fetch Apache Kafka {version} (exit {done.returncode}); is that "
            f"version on Maven Central, and is Maven Central reachable?\n$ {' '.join(argv)}\n{tail}"
        )


def server_properties(
    *,
    port: int,
    controller_port: int,
    data_dir: Path,
    num_partitions: int = 1,
) -> dict[str, str]:
    """The broker configuration: one combined broker + controller node on 127.0.0.1."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(num_partitions),
        # Internal topics cannot have 3 replicas on one node.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # The first consumer group waits for the offsets topic: 0.8 s with 50 partitions (the
        # default), 0.3 s with 4.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        # A new group is assigned at once instead of after 3 s (tests and demos start groups).
        "group.initial.rebalance.delay.ms": "0",
        # The dead-letter tests need ~1 MB records; Kafka's default limit is 1 MiB.
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        # After a SIGKILL the new incarnation cannot register until the old one's session
        # expires: 9 s by default (13.7 s from kill to answering; 7-10 s with 4 s). Heartbeats
        # on one node never leave the JVM, so a short session is safe here.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
        # The cleaner's default 128 MiB dedupe buffer would take a quarter of the small heap.
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }


def _write_properties(path: Path, props: Mapping[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's tools would read it as an option
            return cid


class ApacheKafka(KafkaServer):
    """Apache Kafka KRaft single node under ``work_dir``; durable across stop, start, restart.

    Ports are chosen once, so a restarted broker answers at the same :attr:`bootstrap`.
    """

    #: A controlled shutdown moves leadership and flushes logs: give it time before SIGKILL.
    stop_timeout_s = 60.0

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        cache_dir: Path | None = None,
        heap_mb: int = 512,
        num_partitions: int = 1,
        start_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(
            "apache-kafka", work_dir / "kafka.log", port=port, start_timeout_s=start_timeout_s
        )
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.config_path = work_dir / "server.properties"
        self.version = version
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        self.num_partitions = num_partitions
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()

    def start(self) -> None:
        """Start (fetching the jars and formatting the storage on first use); return once
        metadata answers. No-op when already running."""
        super().start()
        log.info(
            "Apache Kafka %s answered at %s after %.1fs",
            self.version,
            self.bootstrap,
            self.startup_s or 0.0,
        )

    def _launch(self) -> Launch:
        java = find_java()
        libs = ensure_kafka_libs(self.version, self.cache_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _write_properties(
            self.config_path,
            server_properties(
                port=self.port,
                controller_port=self.controller_port,
                data_dir=self.data_dir,
                num_partitions=self.num_partitions,
            ),
        )
        broker_log4j = self.work_dir / "log4j2.properties"
        broker_log4j.write_text(_BROKER_LOG4J.format(level="INFO"))
        if not (self.data_dir / "meta.properties").is_file():
            self._format_storage(java, libs)
        argv = [
            str(java),
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={broker_log4j}",
            "-cp",
            str(libs / "*"),  # expanded by java itself, not by a shell
            "kafka.Kafka",
            str(self.config_path),
        ]
        return Launch(argv, cwd=self.work_dir)

    def _format_storage(self, java: Path, libs: Path) -> None:
        tool_log4j = self.work_dir / "log4j2-tools.properties"
        tool_log4j.write_text(_BROKER_LOG4J.format(level="WARN"))
        argv = [
            str(java),
            "-Xmx256m",
            # A one-shot tool: C1 only and the serial GC cut it from 2.5 s to 1.8 s here.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={tool_log4j}",
            "-cp",
            str(libs / "*"),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            _cluster_id(),
            "--config",
            str(self.config_path),
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300)  # noqa: S603
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"formatting Kafka storage in {self.data_dir} timed out") from exc
        if done.returncode != 0:
            raise ServiceError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {done.returncode}):\n"
                + "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            )

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop with ``sig`` (SIGTERM: controlled shutdown; SIGKILL: a crash) and start again
        on the same ports and the same log directory."""
        self.stop(sig)
        self.start()
