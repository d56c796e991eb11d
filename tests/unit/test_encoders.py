"""Unit tests for encoders/: registry, pooling, the real packaged model on CPU, the
micro-batcher and the cached encoder. No network, no broker, no Redis."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from encoders.batcher import MicroBatcher
from encoders.cache import CachedEncoder, MemoryCache, content_hash
from encoders.pooling import pool, read_pooling
from encoders.registry import (
    ModelNotFoundError,
    default_model_dir,
    model_version,
    resolve_model_dir,
)
from encoders.text import TextEncoder, pick_device

Vectors = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def encoder() -> Iterator[TextEncoder]:
    yield TextEncoder(default_model_dir(), device="cpu")


def cosine(a: Vectors, b: Vectors) -> float:
    return float(np.dot(a, b))


def numbers(texts: list[str]) -> Vectors:
    """A stand-in encode_fn: each text "n" becomes the row [n, -n]."""
    values = [float(text) for text in texts]
    return np.array([[v, -v] for v in values], dtype=np.float32).reshape(len(texts), 2)


# --- registry -------------------------------------------------------------------------


def test_empty_spec_resolves_to_packaged_model() -> None:
    model_dir = resolve_model_dir("")
    assert model_dir == default_model_dir()
    assert (model_dir / "config.json").is_file()


@pytest.mark.parametrize("spec", ["missing-dir", "sentence-transformers/all-MiniLM-L6-v2"])
def test_missing_model_dir_names_variable_and_path(spec: str, tmp_path: Path) -> None:
    target = tmp_path / spec
    with pytest.raises(ModelNotFoundError) as raised:
        resolve_model_dir(str(target))
    assert str(target) in str(raised.value)
    assert "STREAMREC_MODEL" in str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)


def test_dir_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=re.escape(str(tmp_path))):
        resolve_model_dir(str(tmp_path))


def test_packaged_model_version_is_stable_and_named() -> None:
    first = model_version(default_model_dir())
    assert re.fullmatch(r"all-MiniLM-L6-v2-[0-9a-f]{8}", first)
    assert model_version(default_model_dir()) == first


def test_version_follows_the_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights one")
    before = model_version(tmp_path)
    assert before.startswith(f"{tmp_path.name}-")
    weights.write_bytes(b"fine-tuned weights two")
    assert model_version(tmp_path) != before


def test_dir_without_weights_has_no_version(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no weights"):
        model_version(tmp_path)


# --- pooling --------------------------------------------------------------------------


def test_pooling_read_from_model_dir(tmp_path: Path) -> None:
    assert read_pooling(default_model_dir()) == "mean"
    assert read_pooling(tmp_path) == "mean"  # no 1_Pooling/: mean
    (tmp_path / "1_Pooling").mkdir()
    config = tmp_path / "1_Pooling" / "config.json"
    config.write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert read_pooling(tmp_path) == "cls"
    config.write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(ValueError, match="pooling='mean'"):
        read_pooling(tmp_path)


@given(
    length=st.integers(1, 6),
    padding=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["mean", "cls", "max"]),
)
def test_padding_never_changes_a_vector(length: int, padding: int, seed: int, mode: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, length + padding, 8, generator=generator)
    mask = torch.tensor([[1] * length + [0] * padding])
    alone = pool(hidden[:, :length], mask[:, :length], mode)  # type: ignore[arg-type]
    padded = pool(hidden, mask, mode)  # type: ignore[arg-type]
    torch.testing.assert_close(padded, alone)
    assert torch.linalg.vector_norm(padded, dim=1).item() == pytest.approx(1.0, abs=1e-5)


# --- text encoder ---------------------------------------------------------------------


def test_auto_device_is_cpu_without_gpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_encode_returns_unit_float32_rows(encoder: TextEncoder) -> None:
    vectors = encoder.encode(["hello world", "", "a third text"])
    assert vectors.shape == (3, encoder.dim) == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_rows_stay_in_input_order_despite_length_sorting(encoder: TextEncoder) -> None:
    texts = [
        "short",
        "a considerably longer sentence about the league final and the winning goal " * 3,
        "medium length text about bread",
        "x",
        "another long one describing a hotel by the beach with views of the mountain " * 2,
    ]
    batched = encoder.encode(texts, batch_size=2)
    one_by_one = np.vstack([encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_similar_meanings_are_closer(encoder: TextEncoder) -> None:
    football, soccer, bread = encoder.encode(
        ["The football match ended in a draw.", "The soccer game finished level.", "Baking bread"]
    )
    assert cosine(football, soccer) > cosine(football, bread) + 0.2


def test_tokenize_matches_the_tokenizers_own_padding(encoder: TextEncoder) -> None:
    texts = ["one", "two words here", "a text " * 200]  # the last one is truncated
    ours = encoder.tokenize(texts)
    reference = encoder.tokenizer(
        texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    assert set(ours) == set(reference)
    for name, tensor in ours.items():
        assert torch.equal(tensor, reference[name])


# --- micro-batcher --------------------------------------------------------------------


async def test_concurrent_callers_share_one_batch() -> None:
    calls: list[list[str]] = []

    def encode_fn(texts: list[str]) -> Vectors:
        calls.append(texts)
        return numbers(texts)

    async with MicroBatcher(encode_fn, max_batch=32, max_wait_ms=50) as batcher:
        results = await asyncio.gather(*(batcher.encode([str(i), str(i + 100)]) for i in range(5)))
    assert len(calls) == 1
    assert batcher.batches_run == 1
    assert batcher.texts_encoded == 10
    assert batcher.batch_sizes == collections.Counter({10: 1})
    for i, rows in enumerate(results):
        np.testing.assert_array_equal(rows[:, 0], [i, i + 100])


async def test_full_batch_does_not_wait_for_the_deadline() -> None:
    async with MicroBatcher(numbers, max_batch=4, max_wait_ms=60_000) as batcher:
        async with asyncio.timeout(5):
            rows = await batcher.encode(["1", "2", "3", "4"])
    np.testing.assert_array_equal(rows[:, 0], [1, 2, 3, 4])


async def test_big_request_is_split_at_max_batch_and_reassembled() -> None:
    async with MicroBatcher(numbers, max_batch=4, max_wait_ms=1) as batcher:
        rows = await batcher.encode([str(i) for i in range(10)])
    np.testing.assert_array_equal(rows[:, 0], np.arange(10))
    assert batcher.batch_sizes == collections.Counter({4: 2, 2: 1})


async def test_error_reaches_only_the_callers_of_its_batch() -> None:
    def encode_fn(texts: list[str]) -> Vectors:
        if "666" in texts:
            raise ValueError("cannot encode 666")
        return numbers(texts)

    async with MicroBatcher(encode_fn, max_batch=3, max_wait_ms=1000) as batcher:
        bad, neighbour, later = await asyncio.gather(
            batcher.encode(["666"]),
            batcher.encode(["1", "2"]),  # same batch as the bad text
            batcher.encode(["3"]),  # next batch
            return_exceptions=True,
        )
    assert isinstance(bad, ValueError)
    assert neighbour is bad
    assert isinstance(later, np.ndarray)
    np.testing.assert_array_equal(later[:, 0], [3])
    assert (batcher.batches_failed, batcher.batches_run) == (1, 1)


async def test_cancelled_caller_texts_are_not_encoded() -> None:
    calls: list[list[str]] = []

    def encode_fn(texts: list[str]) -> Vectors:
        calls.append(texts)
        return numbers(texts)

    async with MicroBatcher(encode_fn, max_batch=32, max_wait_ms=50) as batcher:
        gone = asyncio.create_task(batcher.encode(["1"]))
        kept = asyncio.create_task(batcher.encode(["2"]))
        await asyncio.sleep(0)
        gone.cancel()
        np.testing.assert_array_equal((await kept)[:, 0], [2])
    assert calls == [["2"]]


async def test_event_loop_keeps_running_while_encoding() -> None:
    def slow(texts: list[str]) -> Vectors:
        time.sleep(0.3)
        return numbers(texts)

    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with MicroBatcher(slow, max_wait_ms=0) as batcher:
        beating = asyncio.create_task(heartbeat())
        await batcher.encode(["1"])
        beating.cancel()
    assert ticks >= 10


async def test_close_finishes_submitted_work_then_refuses_more() -> None:
    batcher = MicroBatcher(numbers, max_batch=100, max_wait_ms=60_000)
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.encode(["1"])
    await batcher.start()
    pending = asyncio.create_task(batcher.encode(["7"]))
    await asyncio.sleep(0)
    await batcher.close()
    np.testing.assert_array_equal((await pending)[:, 0], [7])
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.encode(["1"])


async def test_batcher_with_real_model_matches_direct_encoding(encoder: TextEncoder) -> None:
    texts = ["news about the cup final", "a recipe for sourdough", "stock prices fell"]
    async with MicroBatcher(encoder.encode, max_batch=8, max_wait_ms=20) as batcher:
        rows = await asyncio.gather(*(batcher.encode([text]) for text in texts))
    np.testing.assert_allclose(np.vstack(rows), encoder.encode(texts), atol=1e-5)
    assert batcher.batches_run == 1


# --- cache ----------------------------------------------------------------------------


def test_content_hash_is_sha256_of_version_nul_text() -> None:
    assert content_hash("v1", "héllo") == hashlib.sha256("v1\0héllo".encode()).hexdigest()
    assert content_hash("v1", "a") != content_hash("v2", "a")


async def test_cache_hits_skip_the_encoder() -> None:
    seen: list[list[str]] = []

    def encode_fn(texts: list[str]) -> Vectors:
        seen.append(texts)
        return numbers(texts)

    async with MicroBatcher(encode_fn, max_wait_ms=0) as batcher:
        cached = CachedEncoder(batcher, "v1", MemoryCache())
        first = await cached.encode(["1", "2", "1"])
        second = await cached.encode(["2", "3", "1"])
    assert seen == [["1", "2"], ["3"]]  # duplicates and cached texts never reach the model
    np.testing.assert_array_equal(first[:, 0], [1, 2, 1])
    np.testing.assert_array_equal(second[:, 0], [2, 3, 1])
    assert (cached.hits, cached.misses) == (2, 3)


async def test_new_model_version_does_not_reuse_old_vectors() -> None:
    cache = MemoryCache()
    async with MicroBatcher(numbers, max_wait_ms=0) as batcher:
        await CachedEncoder(batcher, "v1", cache).encode(["1"])
        v2 = CachedEncoder(batcher, "v2", cache)
        await v2.encode(["1"])
    assert (v2.hits, v2.misses) == (0, 1)


async def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_items=2)
    row = np.ones(2, dtype=np.float32)
    await cache.put_many({"a": row, "b": row})
    await cache.get_many(["a"])
    await cache.put_many({"c": row})
    assert set(await cache.get_many(["a", "b", "c"])) == {"a", "c"}
