"""What a worker builds at start-up: encoder, Redis store and reader, the recommender engine.

Kept apart from the Faust app so the CLI, the benchmark and the tests can build the same
runtime without a broker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis.exceptions

from encoders.batcher import MicroBatcher
from encoders.cache import CachedEncoder, RedisCache
from encoders.registry import resolve_model_dir
from encoders.text import TextEncoder
from state.catalogue import Catalogue
from state.engine import Engine
from state.reader import RecsReader
from state.redis_store import BlockingPublisher, Keys, RedisStore, RedisUnavailable, Ttls
from streams.engine_config import engine_config
from streams.settings import Settings


def _ttls(settings: Settings) -> Ttls:
    return Ttls(user_s=settings.user_ttl_s, recs_s=settings.recs_ttl_s, item_s=settings.item_ttl_s)


def make_store(settings: Settings) -> RedisStore:
    """A :class:`RedisStore` for the configured URL, prefix and TTLs."""
    return RedisStore.from_url(
        settings.redis_url.get_secret_value(), Keys(settings.redis_prefix), _ttls(settings)
    )


def make_engine(settings: Settings, dim: int, version: str) -> Engine:
    """An empty :class:`Engine` for an encoder of ``dim`` dimensions and ``version``."""
    return Engine(Catalogue(dim, version), engine_config(settings))


async def check_redis(store: RedisStore, url_for_humans: str) -> None:
    """Fail fast with a readable message when Redis is not reachable."""
    try:
        await store.client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {url_for_humans} (STREAMREC_REDIS_URL): {exc}"
        ) from exc


@dataclass
class Runtime:
    """A started worker runtime; :meth:`close` releases it."""

    encoder: TextEncoder
    batcher: MicroBatcher
    embeddings: CachedEncoder
    store: RedisStore
    publisher: BlockingPublisher
    reader: RecsReader
    engine: Engine

    @property
    def version(self) -> str:
        return self.encoder.version

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Load the encoder and connect Redis, before any event loop or consumer exists.

        A worker builds this before it joins the consumer group, so its first batch never
        waits: faust-streaming can drop records delivered while an agent's first batch is
        blocked (seen as lost events after a restart).
        """
        publisher = BlockingPublisher(
            settings.redis_url.get_secret_value(), Keys(settings.redis_prefix), _ttls(settings)
        )
        publisher.ping(settings.redis_url.get_secret_value().split("@")[-1])
        store = make_store(settings)
        encoder = TextEncoder(
            resolve_model_dir(settings.model), settings.device, settings.encoder_max_tokens
        )
        batcher = MicroBatcher(
            functools.partial(encoder.encode, batch_size=settings.encoder_max_batch),
            max_batch=settings.encoder_max_batch,
            max_wait_ms=settings.encoder_max_wait_ms,
        )
        cache = RedisCache(store.client, store.keys.embedding, settings.item_ttl_s)
        return cls(
            encoder=encoder,
            batcher=batcher,
            embeddings=CachedEncoder(batcher, encoder.version, cache),
            store=store,
            publisher=publisher,
            reader=RecsReader(store, settings.popularity_half_life_s),
            engine=make_engine(settings, encoder.dim, encoder.version),
        )

    async def start(self) -> None:
        """The event-loop half of start-up: encoder batcher task, active model version."""
        await self.batcher.start()
        await self.store.set_model(self.encoder.version)

    async def close(self) -> None:
        await self.batcher.close()
        await self.store.close()
        self.publisher.close()
