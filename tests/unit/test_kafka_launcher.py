"""The Apache Kafka launcher explains what is missing, and never binds beyond loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.kafka_launcher import (
    KAFKA_VERSION,
    ensure_kafka_libs,
    find_java,
    server_properties,
)
from streams.services import ServiceError


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty directory (tests add fake tools to it); no JAVA_HOME."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return bin_dir


def _fake_java(bin_dir: Path, version_line: str) -> None:
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)


def test_missing_java_says_what_to_install(bare_path: Path) -> None:
    with pytest.raises(ServiceError, match=r"needs Java 17\+ and Maven.*java not found"):
        find_java()


def test_old_java_is_refused_with_its_version(bare_path: Path) -> None:
    _fake_java(bare_path, 'openjdk version "11.0.2" 2019-01-15')
    with pytest.raises(ServiceError, match="is Java 11; set JAVA_HOME"):
        find_java()


def test_java_8_reports_itself_as_1_8(bare_path: Path) -> None:
    _fake_java(bare_path, 'java version "1.8.0_392"')
    with pytest.raises(ServiceError, match="is Java 8"):
        find_java()


def test_java_17_is_accepted(bare_path: Path) -> None:
    _fake_java(bare_path, 'openjdk version "17.0.15" 2025-04-15')
    assert find_java() == bare_path / "java"


def test_missing_maven_is_explained_when_the_jars_are_not_cached(
    bare_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(ServiceError, match=r"mvn not found.*apt-get install maven"):
        ensure_kafka_libs(cache_dir=tmp_path / "cache")


def test_cached_jars_need_no_maven(bare_path: Path, tmp_path: Path) -> None:
    libs = tmp_path / "cache" / "libs"
    libs.mkdir(parents=True)
    (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").write_bytes(b"")
    assert ensure_kafka_libs(cache_dir=tmp_path / "cache") == libs


def test_broker_listens_on_loopback_only(tmp_path: Path) -> None:
    props = server_properties(port=19092, controller_port=19093, data_dir=tmp_path)
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["process.roles"] == "broker,controller"
