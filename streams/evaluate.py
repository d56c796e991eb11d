"""``streamrec eval``: load a replay, encode its items (cached on disk), run the prequential
harness in-process, print the table or JSON, and optionally write the report.

The harness itself lives in :mod:`state.evaluation`; this module is the I/O around it: the
encoder, the embedding cache under ``STREAMREC_DATA_DIR``, progress bars and output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from encoders.cache import content_hash
from encoders.disk_cache import DiskCache
from state.baselines import job_groups, make_methods
from state.datasets import Replay, ReplayItem, load_jsonl_dir, load_replay
from state.engine import EngineConfig
from state.evaluation import EvalOptions, EvalResult, build_catalogue, evaluate
from streams.engine_config import engine_config
from streams.records import Item
from streams.settings import Settings
from streams.synthetic import planted_stream, write_replay

#: ``streamrec eval synthetic`` generates the planted-interest stream with drift.
SYNTHETIC: Final = "synthetic"
#: Columns of the terminal table, in order (others stay in ``--json``).
TABLE_COLUMNS: Final = (
    "hr@10",
    "ndcg@10",
    "mrr",
    "auc",
    "coverage",
    "diversity",
    "novelty",
    "gini_items",
    "gini_categories",
    "seconds",
)
_ENCODE_CHUNK: Final = 256


def item_text(item: ReplayItem) -> str:
    """What a worker's encoder reads for ``item`` (the ``items`` topic record's text)."""
    return Item(
        item_id=item.item_id,
        title=item.title,
        body=item.body,
        category=item.category,
        tags=list(item.tags) or None,
    ).text()


def encode_items(
    items: Sequence[ReplayItem], settings: Settings, progress: bool = True
) -> tuple[npt.NDArray[np.float32], str]:
    """Unit vectors for ``items`` (rows in order) and the encoder version.

    Vectors are cached in ``STREAMREC_DATA_DIR/embeddings.sqlite`` by content hash, so a second
    run encodes nothing.
    """
    from encoders.registry import model_version, resolve_model_dir

    model_dir = resolve_model_dir(settings.model)
    version = model_version(model_dir)
    texts = [item_text(i) for i in items]
    hashes = [content_hash(version, t) for t in texts]
    cache = DiskCache(settings.data_dir / "embeddings.sqlite")
    try:
        found = cache.get_many(hashes)
        missing = list(dict.fromkeys(h for h in hashes if h not in found))
        if missing:
            from encoders.text import TextEncoder

            encoder = TextEncoder(model_dir, settings.device, settings.encoder_max_tokens)
            text_of = dict(zip(hashes, texts, strict=True))
            with tqdm(
                total=len(missing), unit="item", desc="encoding", disable=not progress
            ) as bar:
                for start in range(0, len(missing), _ENCODE_CHUNK):
                    chunk = missing[start : start + _ENCODE_CHUNK]
                    vectors = encoder.encode(
                        [text_of[h] for h in chunk], batch_size=settings.encoder_max_batch
                    )
                    fresh = dict(zip(chunk, vectors, strict=True))
                    cache.put_many(fresh)
                    found.update(fresh)
                    bar.update(len(chunk))
    finally:
        cache.close()
    if not hashes:
        return np.zeros((0, 1), dtype=np.float32), version
    return np.stack([found[h] for h in hashes]).astype(np.float32), version


def load_source(source: str, settings: Settings, seed: int = 7) -> Replay:
    """The replay named by ``source``: ``synthetic``, ``ml-100k``, or a directory."""
    if source == SYNTHETIC and not Path(source).exists():
        directory = settings.data_dir / "replays" / f"synthetic-{seed}"
        if not (directory / "events.jsonl").is_file():
            write_replay(planted_stream(seed=seed), directory)
        replay = load_jsonl_dir(directory)
        replay.name = SYNTHETIC
        return replay
    return load_replay(source)


def run_eval(
    replay: Replay,
    settings: Settings,
    methods: Sequence[str],
    options: EvalOptions,
    progress: bool = True,
    seed: int = 0,
    jobs: int = 1,
) -> EvalResult:
    """Encode, build the methods and replay in-process (test-then-train).

    With ``jobs`` > 1 the methods are split over that many processes
    (:func:`state.baselines.job_groups`), each replaying the whole stream for its share: the
    methods never read each other's state, so the figures are those of one process, in less
    wall time on a machine with the cores.
    """
    vectors, version = encode_items(replay.items, settings, progress)
    config = engine_config(settings)
    groups = job_groups(methods, jobs)
    if len(groups) == 1:
        with tqdm(
            total=replay.n_events, unit="ev", desc=f"replay {replay.name}", disable=not progress
        ) as bar:

            def advance(n: int) -> None:
                bar.update(n)

            return _replay(replay, vectors, version, methods, config, seed, options, advance)
    spawn = multiprocessing.get_context("spawn")  # no forked copy of torch's threads
    with (
        spawn.Manager() as manager,
        ProcessPoolExecutor(len(groups), mp_context=spawn) as pool,
        tqdm(
            total=replay.n_events * len(groups),
            unit="ev",
            desc=f"replay {replay.name} ({len(groups)} processes)",
            disable=not progress,
        ) as bar,
    ):
        done: queue.Queue[int] = manager.Queue()
        futures = [
            pool.submit(_replay_group, replay, vectors, version, g, config, seed, options, done)
            for g in groups
        ]
        while not all(f.done() for f in futures):
            with contextlib.suppress(queue.Empty):
                bar.update(done.get(timeout=0.2))
        results = [f.result() for f in futures]  # a worker's exception is raised here
    merged = {name: r.methods[name] for r in results for name in r.methods}
    return dataclasses.replace(results[0], methods={m: merged[m] for m in methods})


def _replay_group(
    replay: Replay,
    vectors: npt.NDArray[np.float32],
    version: str,
    methods: list[str],
    config: EngineConfig,
    seed: int,
    options: EvalOptions,
    done: queue.Queue[int],
) -> EvalResult:
    """One process's share of :func:`run_eval`; reports progress every 1,000 events."""
    pending = [0]

    def advance(n: int) -> None:
        pending[0] += n
        if pending[0] >= 1000:
            done.put(pending[0])
            pending[0] = 0

    result = _replay(replay, vectors, version, methods, config, seed, options, advance)
    done.put(pending[0])
    return result


def _replay(
    replay: Replay,
    vectors: npt.NDArray[np.float32],
    version: str,
    methods: Sequence[str],
    config: EngineConfig,
    seed: int,
    options: EvalOptions,
    advance: Callable[[int], None],
) -> EvalResult:
    """Fresh ``methods`` over the replay's catalogue, replayed test-then-train."""
    catalogue = build_catalogue(replay.items, vectors, version)
    recommenders = make_methods(methods, catalogue, config, seed)
    return evaluate(replay, catalogue, recommenders, options, advance)


def format_table(result: EvalResult) -> str:
    """The terminal table: one row per method, the headline metrics as columns."""
    table = result.table()
    columns = [c for c in TABLE_COLUMNS if any(c in m for m in table.values())]
    width = max([len(m) for m in table] + [6])
    lines = [
        f"{result.dataset}: {result.n_events:,} events, {result.n_items:,} items, "
        f"{result.n_tests:,} scored positives",
        " ".join([f"{'method':<{width}}", *(f"{c:>15}" for c in columns)]),
    ]
    for method, metrics in table.items():
        if not any(c in metrics for c in columns):
            continue  # e.g. the --through-kafka agreement row, printed below
        cells = [_cell(metrics.get(c)) for c in columns]
        lines.append(" ".join([f"{method:<{width}}", *(f"{c:>15}" for c in cells)]))
    gaps = sorted({k for m in table.values() for k in m if "_gap:" in k})
    if gaps:
        lines.append("user-group nDCG@10 gaps (best minus worst group):")
        for gap in gaps:
            row = ", ".join(f"{m} {_cell(v.get(gap))}" for m, v in table.items())
            lines.append(f"  {gap.split(':', 1)[1]}: {row}")
    for method, metrics in table.items():
        kafka = {k: v for k, v in metrics.items() if k.startswith(("kafka_", "mirror_"))}
        if kafka:
            lines.append(f"{method}: " + ", ".join(f"{k} {_cell(v)}" for k, v in kafka.items()))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
