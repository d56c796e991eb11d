"""Integration fixtures: one real broker and one real Redis per session, on loopback ports.

``STREAMREC_TEST_BROKER=tansu|apache-kafka|external`` picks the broker (default: Apache Kafka
when ``java`` and ``mvn`` are on PATH, else Tansu). ``external`` uses ``STREAMREC_BROKER`` and
``STREAMREC_REDIS_URL`` as given, starting Valkey only when the latter is unset. Every test in
this folder gets the ``integration`` marker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from streams.kafka_launcher import ApacheKafka
from streams.services import Broker, EmbeddedStack, Valkey, bootstrap_from_url

HERE = Path(__file__).parent
KINDS = ("tansu", "apache-kafka", "external")
#: Figures measured by the tests: (broker, test, name, value, unit). Printed at the end of the
#: run and appended as JSON lines to $STREAMREC_TEST_FIGURES when that is set.
FIGURES: list[tuple[str, str, str, float, str]] = []


@dataclass(frozen=True)
class Stack:
    """What the tests talk to; ``broker`` is the handle of an embedded broker, else None."""

    kind: str
    broker_url: str
    bootstrap: str
    redis_url: str
    broker: Broker | None = None

    @property
    def kafka(self) -> ApacheKafka | None:
        """The Apache Kafka handle (for restarts) when that is the broker under test."""
        return self.broker if isinstance(self.broker, ApacheKafka) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not just this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


def selected_broker() -> str:
    """The broker kind from STREAMREC_TEST_BROKER, or the default for this machine."""
    kind = os.environ.get("STREAMREC_TEST_BROKER", "")
    if not kind:
        return "apache-kafka" if shutil.which("java") and shutil.which("mvn") else "tansu"
    if kind not in KINDS:
        raise pytest.UsageError(
            f"STREAMREC_TEST_BROKER must be one of {', '.join(KINDS)}, got {kind!r}"
        )
    return kind


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The broker and Redis for the whole session, stopped at its end."""
    kind = selected_broker()
    work_dir = tmp_path_factory.mktemp("services")
    if kind != "external":
        started = time.monotonic()
        with EmbeddedStack(work_dir, broker=kind) as embedded:
            took = time.monotonic() - started
            FIGURES.append((kind, "session", "services_start", round(took, 2), "s"))
            if embedded.broker.startup_s is not None:  # process start -> metadata answers
                startup = round(embedded.broker.startup_s, 2)
                FIGURES.append((kind, "session", "broker_start", startup, "s"))
            yield Stack(
                kind, embedded.broker_url, embedded.bootstrap, embedded.redis_url, embedded.broker
            )
        return
    broker_url = os.environ.get("STREAMREC_BROKER", "")
    if not broker_url.startswith("kafka://"):
        raise pytest.UsageError(
            f"STREAMREC_TEST_BROKER=external needs STREAMREC_BROKER=kafka://HOST:PORT, "
            f"got {broker_url!r}"
        )
    redis_url = os.environ.get("STREAMREC_REDIS_URL", "")
    if redis_url:
        yield Stack(kind, broker_url, bootstrap_from_url(broker_url), redis_url)
        return
    with Valkey(work_dir / "valkey") as valkey:
        yield Stack(kind, broker_url, bootstrap_from_url(broker_url), valkey.url)


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    """A client on the session's Redis, database flushed before the test."""
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def topic_names() -> str:
    """A topic-name prefix unique to this test (``t1a2b3c4d-``), so tests never share topics."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def figure(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Callable[[str, float, str], None]:
    """``figure(name, value, unit)`` records a measured figure for the run's summary."""

    def record(name: str, value: float, unit: str = "s") -> None:
        record_property(name, value)
        FIGURES.append((selected_broker(), request.node.name, name, round(value, 2), unit))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.write_sep("-", "measured figures")
    for broker, test, name, value, unit in FIGURES:
        terminalreporter.write_line(f"{broker:<13} {name:<30} {value:>8} {unit:<7} {test}")
    path = os.environ.get("STREAMREC_TEST_FIGURES")
    if path:
        with Path(path).open("a") as out:
            for broker, test, name, value, unit in FIGURES:
                row = {"broker": broker, "test": test, "name": name, "value": value, "unit": unit}
                out.write(json.dumps(row) + "\n")
