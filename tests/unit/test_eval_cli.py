"""``streamrec eval`` end to end on the tiny MIND fixture and a generated planted stream."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from state.datasets import load_jsonl_dir
from state.evaluation import EvalOptions
from streams.cli import main
from streams.evaluate import run_eval
from streams.settings import Settings
from streams.synthetic import planted_stream, write_replay

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STREAMREC_DEVICE", "cpu")
    return tmp_path / "data"


def test_eval_mind_json_and_report(data_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    args = ["eval", str(FIXTURES / "mind"), "--json", "--report", str(report), "--windows", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = orjson.loads(result.stdout)  # progress bars and model loading go to stderr
    assert set(table) == {
        "random",
        "popularity",
        "decayed-popularity",
        "cooccurrence",
        "biased-mf",
        "content",
        "decayed-popularity-long",
        "cooccurrence-long",
        "streamrec",
    }
    for metrics in table.values():
        assert {"hr@10", "ndcg@10", "mrr", "auc", "imp_ndcg@10", "coverage", "gini_items"} <= set(
            metrics
        )
        assert 0.0 <= metrics["auc"] <= 1.0
    page = (report / "index.html").read_text()
    assert "data:image/png;base64," in page and "streamrec" in page
    assert (report / "exposure.png").stat().st_size > 1000
    # The second run reuses the on-disk embedding cache.
    assert (data_dir / "embeddings.sqlite").is_file()


def test_eval_table_and_method_choice(data_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["eval", str(FIXTURES / "mind"), "--methods", "popularity,streamrec"]
    )
    assert result.exit_code == 0, result.output
    assert "popularity" in result.output and "ndcg@10" in result.output
    assert "random" not in result.output
    bad = CliRunner().invoke(main, ["eval", str(FIXTURES / "mind"), "--methods", "oracle"])
    assert bad.exit_code == 2 and "oracle" in bad.output


def test_planted_stream_has_drift_cold_start_and_impressions(tmp_path: Path) -> None:
    stream = planted_stream(n_items=80, n_users=40, n_events=2000, seed=3)
    assert set(stream.segments.values()) == {"stable", "drifting", "cold-start"}
    half = stream.drift_at_ms
    cold = {u for u, s in stream.segments.items() if s == "cold-start"}
    assert all(e["ts"] >= half for e in stream.events if e["user_id"] in cold)
    drifter = next(u for u, s in stream.segments.items() if s == "drifting")
    late = [
        stream.world.category_of[e["item_id"]]
        for e in stream.events
        if e["user_id"] == drifter and e["ts"] >= half and e["type"] == "click"
    ]
    assert late and max(set(late), key=late.count) in stream.after_drift[drifter]
    replay = load_jsonl_dir(write_replay(stream, tmp_path / "replay"))
    assert replay.has_impressions and replay.users[drifter] == {"segment": "drifting"}


def test_methods_split_over_processes_score_as_in_one(data_dir: Path, tmp_path: Path) -> None:
    stream = planted_stream(n_items=80, n_users=40, n_events=1500, seed=5)
    replay = load_jsonl_dir(write_replay(stream, tmp_path / "replay"))
    methods = ["popularity", "content", "cooccurrence", "streamrec", "streamrec-no-click"]
    settings, options = Settings(), EvalOptions(windows=2)
    one = run_eval(replay, settings, methods, options, progress=False, jobs=1)
    two = run_eval(replay, settings, methods, options, progress=False, jobs=2)
    assert list(two.methods) == methods  # the order asked for, whichever process ran it
    for name in methods:
        ours, theirs = one.methods[name], two.methods[name]
        assert {k: v for k, v in ours.metrics.items() if k != "seconds"} == {
            k: v for k, v in theirs.metrics.items() if k != "seconds"
        }, name
        assert ours.windows == theirs.windows and (ours.exposure == theirs.exposure).all()
    assert (two.n_tests, two.window_starts_ms) == (one.n_tests, one.window_starts_ms)
