"""The ``streamrec`` command: worker, produce, recs, demo, bench, eval.

Each subcommand reads the settings once, turns configuration mistakes into a one-line error and
exit code 2, and shows progress on anything long.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click
import orjson

from state.redis_store import RedisStore, RedisUnavailable
from streams.settings import ConfigError, Settings, load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
@click.version_option(package_name="streamrec")
def main() -> None:
    """streamrec: Kafka events -> interest vectors -> Redis recommendations."""


@main.command()
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def worker(loglevel: str) -> None:
    """Run one worker (one consumer-group member); run N of them to scale."""
    from faust.worker import Worker

    from encoders.registry import ModelNotFoundError
    from streams import gc_policy
    from streams.app import create_app
    from streams.runtime import Runtime

    settings = _settings()
    logging.basicConfig(level=getattr(logging, loglevel.upper()))
    if settings.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(settings.blas_threads, user_api="blas")
    try:
        runtime = Runtime.build(settings)
    except (RedisUnavailable, ModelNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    gc_policy.configure()  # full collections on a clock from here on (streams/gc_policy.py)
    sapp = create_app(settings, runtime)
    sapp.stats.watch_gc()
    faust_worker = Worker(sapp.app, loglevel=loglevel, quiet=True)
    # At --loglevel warning and above faust attaches a terminal spinner and lowers the root
    # logger to DEBUG so the spinner sees every record: every debug call in faust and aiokafka
    # then builds a record (measured: 6% of the consumer thread). A worker needs no spinner.
    faust_worker.spinner = None
    faust_worker.execute_from_commandline()


@main.command()
@click.option("--topic", "-t", required=True, help="logical topic: items, events or feedback")
@click.option("--skip-bad", is_flag=True, help="skip lines that are not keyable JSON")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def produce(topic: str, file: Path, skip_bad: bool) -> None:
    """Publish a JSON-lines FILE to TOPIC, keyed per the topic schema."""
    from streams.produce import ProduceError, key_field_for, produce_file

    settings = _settings()
    name = settings.topic(topic)
    try:
        report = produce_file(
            settings.bootstrap_servers, name, file, key_field_for(topic), skip_bad=skip_bad
        )
    except ProduceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"sent {report.sent} records to {name}"
        + (f", skipped {report.skipped} bad lines" if report.skipped else "")
    )


@main.command()
@click.argument("user")
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def recs(user: str, k: int, as_json: bool) -> None:
    """Print what an app would read from Redis for USER."""
    from state.reader import RecsReader
    from streams.runtime import check_redis, make_store

    settings = _settings()

    async def read() -> None:
        store = make_store(settings)
        try:
            await check_redis(store, settings.redis_url.get_secret_value().split("@")[-1])
            result = await RecsReader(store, settings.popularity_half_life_s).read(user, k)
            titles = await _titles(store, [i for i, _ in result.items])
        finally:
            await store.close()
        if as_json:
            click.echo(orjson.dumps(result.as_json()).decode())
            return
        click.echo(f"{user}: {result.source}, model {result.model_version or '-'}")
        for rank, (item, score) in enumerate(result.items, 1):
            click.echo(
                f"{rank:>3}. {item:<14} {score:8.3f}  {titles.get(item, '')[:60]:<60}"
                f"  {result.why.get(item, '')}"
            )

    try:
        asyncio.run(read())
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


async def _titles(store: RedisStore, items: list[str]) -> dict[str, str]:
    pipe = store.client.pipeline(transaction=False)
    for item in items:
        pipe.hget(store.keys.item(item), "title")
    values = await pipe.execute()
    return {i: v.decode() for i, v in zip(items, values, strict=True) if v}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def groups(as_json: bool) -> None:
    """Print the user groups the workers discovered: size, top categories, typical titles."""
    from streams.runtime import check_redis, make_store

    settings = _settings()

    async def read() -> list[dict[str, object]]:
        store = make_store(settings)
        try:
            await check_redis(store, settings.redis_url.get_secret_value().split("@")[-1])
            model, profiles = await store.read_groups()
        finally:
            await store.close()
        if model is None:
            raise click.ClickException(
                "no user groups in Redis yet (workers publish them every STREAMREC_GROUPS_SYNC_S)"
            )
        return profiles

    try:
        profiles = asyncio.run(read())
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(profiles, option=orjson.OPT_INDENT_2).decode())
        return
    for p in sorted(profiles, key=lambda p: -float(str(p["size"]))):
        cats = ", ".join(str(c) for c in p["categories"]) or "-"  # type: ignore[attr-defined]
        click.echo(f"group {p['group']:>3}  size {p['size']:>8}  {cats}")
        for title in p["titles"]:  # type: ignore[attr-defined]
            click.echo(f"      {title}")


@main.command()
@click.option("--users", default=2000, show_default=True)
@click.option("--items", "n_items", default=2000, show_default=True)
@click.option("--rate", default=200.0, show_default=True, help="events per second")
@click.option("--duration", default=60.0, show_default=True, help="seconds of stream (0: forever)")
@click.option(
    "--broker", type=click.Choice(["tansu", "apache-kafka"]), default="tansu", show_default=True
)
def demo(users: int, n_items: int, rate: float, duration: float, broker: str) -> None:
    """Embedded default: broker + Redis + worker + a generated stream, live recommendations."""
    from streams.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_demo(users=users, n_items=n_items, rate=rate, duration_s=duration, broker=broker))


@main.command()
@click.option("--events", "n_events", default=200_000, show_default=True)
@click.option("--items", "n_items", default=10_000, show_default=True)
@click.option("--users", "n_users", default=100_000, show_default=True)
@click.option(
    "--rate",
    default=1000.0,
    show_default=True,
    help="steady rate for the freshness phase (events/s)",
)
@click.option(
    "--no-encoder", is_flag=True, help="skip the encoder sweep (~3 min); pipeline figures only"
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object of figures")
def bench(
    n_events: int, n_items: int, n_users: int, rate: float, no_encoder: bool, as_json: bool
) -> None:
    """Throughput and freshness benchmark against the embedded services."""
    from streams.bench import run_bench

    logging.basicConfig(level=logging.WARNING)
    figures = run_bench(
        n_events=n_events,
        n_items=n_items,
        n_users=n_users,
        rate=rate,
        quiet=as_json,
        encoder=not no_encoder,
    )
    click.echo(
        orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode()
        if as_json
        else "\n".join(f"{k:>28}: {v}" for k, v in figures.items())
    )


@main.command(name="eval")
@click.argument("source")
@click.option(
    "--methods",
    default="",
    help="comma-separated: random, popularity, decayed-popularity, cooccurrence, biased-mf, "
    "content, decayed-popularity-long, cooccurrence-long, streamrec (the default: all of "
    "these), and the ablations content+collab, collab+popular, streamrec-ranker-content, "
    "streamrec-no-click, streamrec-single-interest, streamrec-single-interest-no-click, "
    "streamrec+groups",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object {method: {metric: v}}")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="write PNG plots and a self-contained HTML page here",
)
@click.option("--windows", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--depth",
    default=100,
    show_default=True,
    type=click.IntRange(10, 100_000),
    help="ranks past this count as misses (MRR 0)",
)
@click.option("--seed", default=7, show_default=True, help="synthetic stream and random baseline")
@click.option(
    "--through-kafka",
    is_flag=True,
    help="also replay through a real broker and worker, reading rankings from Redis, and "
    "report how often they agree with the in-process engine",
)
@click.option(
    "--kafka-events",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="events sent through Kafka with --through-kafka (each waits for the worker)",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="processes to split the methods over  [default: one per core from 20,000 events]",
)
def eval_(
    source: str,
    methods: str,
    as_json: bool,
    report_dir: Path | None,
    windows: int,
    depth: int,
    seed: int,
    through_kafka: bool,
    kafka_events: int,
    jobs: int | None,
) -> None:
    """Prequential (test-then-train) evaluation of SOURCE against baselines.

    SOURCE is a replay directory (items.jsonl + events.jsonl [+ feedback.jsonl, users.json]),
    a MIND directory (news.tsv + behaviors.tsv), 'ml-100k' (MovieLens-100K from the recbole
    wheel) or 'synthetic' (planted interests with drift and cold-start users).
    """
    import numpy as np

    from state.baselines import DEFAULT_METHODS, METHODS
    from state.datasets import DatasetError
    from state.evaluation import EvalOptions, MethodResult
    from streams.evaluate import format_table, load_source, run_eval

    settings = _settings()
    picked = [m.strip() for m in methods.split(",") if m.strip()] or list(DEFAULT_METHODS)
    unknown = [m for m in picked if m not in METHODS]
    if unknown:
        raise click.UsageError(f"unknown --methods {unknown}; choose from {list(METHODS)}")
    try:
        replay = load_source(source, settings, seed)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    options = EvalOptions(depth=depth, windows=windows)
    if jobs is None:  # a process costs seconds to start: worth it on long replays only
        jobs = len(os.sched_getaffinity(0)) if replay.n_events >= 20_000 else 1
    result = run_eval(replay, settings, picked, options, not as_json, seed, jobs)
    if through_kafka:
        from streams.eval_kafka import replay_through_kafka

        agreement = replay_through_kafka(replay, settings, kafka_events, progress=not as_json)
        result.methods.setdefault(
            "streamrec-kafka", MethodResult(agreement.as_metrics(), {}, np.zeros(result.n_items))
        )
    if report_dir is not None:
        from streams.eval_report import write_report

        write_report(result, report_dir)
    if as_json:
        click.echo(orjson.dumps(result.table(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_table(result))
        if report_dir is not None:
            click.echo(f"report: {report_dir / 'index.html'}")
