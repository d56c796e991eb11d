"""Replay datasets for the evaluation harness: our topic-schema directories, MIND and MovieLens.

Every loader returns a :class:`Replay`: the catalogue, the steps in event-time order (single
events, or MIND impression lists) and optional user attributes for the fairness metrics. Pure
file reading, no encoder, no broker.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from state.interest import EVENT_TYPES, context_position

#: The built-in real dataset: MovieLens-100K as shipped inside the ``recbole`` wheel.
MOVIELENS_NAME: Final = "ml-100k"
MOVIELENS_INSTALL: Final = '.venv/bin/python -m pip install --no-deps "recbole==1.2.1"'
_MOVIELENS_DIR: Final = "recbole/dataset_example/ml-100k"
#: Event types that count as "the user wanted this" when scoring (the issue's click/like/share).
TEST_TYPES: Final[frozenset[str]] = frozenset({"click", "like", "share"})
_MIND_TIME: Final = "%m/%d/%Y %I:%M:%S %p"


class DatasetError(ValueError):
    """A replay directory that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """A catalogue item as on the ``items`` topic."""

    item_id: str
    title: str
    body: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()
    created_ms: int | None = None  # ``created_at``, when the source gives it


@dataclass(frozen=True, slots=True)
class ReplayEvent:
    """One interaction; ``test=False`` marks warm-up history that is learned, never scored."""

    user_id: str
    type: str
    item_id: str | None
    ts_ms: int
    dwell_ms: float | None = None
    rating: float | None = None
    test: bool = True
    position: int | None = None  # where the item was shown (0: the top), when known


@dataclass(frozen=True, slots=True)
class ImpressionList:
    """Candidates shown together to one user, with clicked (1) / skipped (0) labels (MIND)."""

    user_id: str
    ts_ms: int
    candidates: tuple[str, ...]
    labels: tuple[int, ...]

    def events(self) -> list[ReplayEvent]:
        """What the list teaches once it has been scored: clicks and bare impressions."""
        return [
            ReplayEvent(
                self.user_id, "click" if y else "impression", item, self.ts_ms, position=place
            )
            for place, (item, y) in enumerate(zip(self.candidates, self.labels, strict=True))
        ]


Step = ReplayEvent | ImpressionList


@dataclass
class Replay:
    """A dataset ready to replay: items, steps in event-time order, user attributes."""

    name: str
    items: list[ReplayItem]
    steps: list[Step]
    users: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return sum(len(s.candidates) if isinstance(s, ImpressionList) else 1 for s in self.steps)

    @property
    def has_impressions(self) -> bool:
        """True when impressions give negatives, so AUC is defined."""
        return any(isinstance(s, ImpressionList) or s.type == "impression" for s in self.steps)


def parse_ts_ms(value: object, where: str) -> int:
    """Epoch milliseconds from ISO-8601 text or an epoch-ms number (the topic schema).

    >>> parse_ts_ms("2026-01-01T00:00:00Z", "x"), parse_ts_ms(1767225600000, "x")
    (1767225600000, 1767225600000)
    """
    if isinstance(value, bool) or value is None:
        raise DatasetError(f"{where}: ts is required (ISO-8601 or epoch ms)")
    if isinstance(value, int | float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DatasetError(f"{where}: ts is not ISO-8601: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise DatasetError(f"{where}: ts must be ISO-8601 text or epoch ms")


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not JSON ({exc})") from None
            if not isinstance(doc, dict):
                raise DatasetError(f"{where}: expected a JSON object")
            yield where, doc


#: Outcomes of a served recommendation, as event types (an ignored one is an impression: the
#: click model's negative for the user's next engagement).
OUTCOMES: Final = {
    "clicked": "click",
    "liked": "like",
    "disliked": "dislike",
    "shared": "share",
    "hidden": "hide",
    "ignored": "impression",
    "skipped": "impression",
}


def feedback_type(label: object) -> str | None:
    """Event type for a feedback label: like/dislike, a 1-5 rating, or a served outcome.

    The workers' feedback agent and the replay map labels alike; ``None``: not a label.

    >>> [feedback_type(x) for x in (5, "2", 3.0, "Liked", "ignored", "click", "meh", "nan")]
    ['like', 'dislike', 'view', 'like', 'impression', 'click', None, None]
    """
    if isinstance(label, str):
        with contextlib.suppress(ValueError):
            label = float(label)  # a rating sent as text
    if isinstance(label, int | float) and not isinstance(label, bool):
        if not math.isfinite(label):
            return None
        return "like" if label >= 4 else "dislike" if label <= 2 else "view"
    text = str(label).lower()
    if text in EVENT_TYPES:
        return text
    return OUTCOMES.get(text)


def _read_items(path: Path) -> list[ReplayItem]:
    items: dict[str, ReplayItem] = {}
    for where, doc in _json_lines(path):
        if not doc.get("item_id") or not doc.get("title"):
            raise DatasetError(f"{where}: items need item_id and title")
        tags = doc.get("tags") or ()
        items[str(doc["item_id"])] = ReplayItem(  # the latest record per item wins
            str(doc["item_id"]),
            str(doc["title"]),
            str(doc.get("body") or ""),
            str(doc.get("category") or ""),
            tuple(str(t) for t in tags),
            None if doc.get("created_at") is None else parse_ts_ms(doc["created_at"], where),
        )
    return list(items.values())


def _read_events(path: Path) -> list[ReplayEvent]:
    events: list[ReplayEvent] = []
    for where, doc in _json_lines(path):
        etype = doc.get("type")
        if etype not in EVENT_TYPES or not doc.get("user_id"):
            raise DatasetError(f"{where}: needs user_id and a type in {sorted(EVENT_TYPES)}")
        item = doc.get("item_id")
        if item is None and etype != "search":
            raise DatasetError(f"{where}: {etype} events need an item_id")
        dwell = doc.get("dwell_ms")
        events.append(
            ReplayEvent(
                str(doc["user_id"]),
                str(etype),
                None if item is None else str(item),
                parse_ts_ms(doc.get("ts"), where),
                None if dwell is None else float(dwell),
                position=_position(doc, where),
            )
        )
    return events


def _position(doc: dict[str, Any], where: str) -> int | None:
    try:
        return context_position(doc.get("context"))
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _read_feedback(path: Path) -> list[ReplayEvent]:
    events: list[ReplayEvent] = []
    for where, doc in _json_lines(path):
        etype = feedback_type(doc.get("label"))
        if etype is None or not doc.get("user_id") or not doc.get("item_id"):
            continue  # outcome labels we cannot map carry no interest signal
        ts = parse_ts_ms(doc.get("ts"), where)
        events.append(ReplayEvent(str(doc["user_id"]), etype, str(doc["item_id"]), ts))
    return events


def _read_users(path: Path) -> dict[str, dict[str, str]]:
    raw = orjson.loads(path.read_bytes())
    if not isinstance(raw, dict) or not all(isinstance(a, dict) for a in raw.values()):
        raise DatasetError(f"{path}: expected {{user_id: {{attribute: value}}}}")
    return {str(u): {str(k): str(v) for k, v in a.items()} for u, a in raw.items()}


def load_jsonl_dir(path: Path) -> Replay:
    """Read a directory in the topic schema: ``items.jsonl``, ``events.jsonl``, optional
    ``feedback.jsonl`` (labels become like/dislike events) and ``users.json``
    (``{user_id: {attribute: value}}``)."""
    for required in ("items.jsonl", "events.jsonl"):
        if not (path / required).is_file():
            raise DatasetError(
                f"{path} has no {required}; a replay directory needs both "
                "items.jsonl and events.jsonl (the topic schema)"
            )
    events = _read_events(path / "events.jsonl")
    if (path / "feedback.jsonl").is_file():
        events += _read_feedback(path / "feedback.jsonl")
    users = _read_users(path / "users.json") if (path / "users.json").is_file() else {}
    events.sort(key=lambda e: e.ts_ms)  # stable: same-time events keep file order
    return Replay(path.name, _read_items(path / "items.jsonl"), list(events), users)


def _mind_ts(text: str, where: str) -> int:
    try:
        return int(datetime.strptime(text, _MIND_TIME).replace(tzinfo=UTC).timestamp() * 1000)
    except ValueError:
        raise DatasetError(f"{where}: time {text!r} is not like 11/15/2019 8:55:22 AM") from None


def load_mind(path: Path) -> Replay:
    """Read MIND (``news.tsv`` + ``behaviors.tsv``).

    A user's click history is learned (never scored) just before their first impression; each
    impression line becomes an :class:`ImpressionList` scored the leaderboard's way.
    """
    items: list[ReplayItem] = []
    with (path / "news.tsv").open(encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 4:
                raise DatasetError(
                    f"{path / 'news.tsv'}: expected id, category, subcategory, "
                    f"title[, abstract, ...]; got {len(row)} columns"
                )
            body = row[4] if len(row) > 4 else ""
            items.append(ReplayItem(row[0], row[3], body, row[1], (row[2],) if row[2] else ()))
    steps: list[tuple[int, int, list[Step]]] = []
    seen_users: set[str] = set()
    with (path / "behaviors.tsv").open(encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            where = f"{path / 'behaviors.tsv'}:{lineno}"
            if len(row) != 5:
                raise DatasetError(f"{where}: expected 5 tab-separated columns")
            _, user, when, history, impressions = row
            ts = _mind_ts(when, where)
            group: list[Step] = []
            if user not in seen_users:
                seen_users.add(user)
                clicks = history.split()
                group += [
                    ReplayEvent(user, "click", item, ts - len(clicks) + n, test=False)
                    for n, item in enumerate(clicks)
                ]
            pairs = [p.rsplit("-", 1) for p in impressions.split()]
            if any(len(p) != 2 or p[1] not in ("0", "1") for p in pairs):
                raise DatasetError(f"{where}: impressions must look like N123-1 N456-0")
            group.append(
                ImpressionList(
                    user, ts, tuple(p[0] for p in pairs), tuple(int(p[1]) for p in pairs)
                )
            )
            steps.append((ts, lineno, group))
    steps.sort(key=lambda s: (s[0], s[1]))
    return Replay(path.name, items, [step for _, _, group in steps for step in group])


def movielens_dir() -> Path:
    """The MovieLens-100K atomic files inside the installed ``recbole`` wheel."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            f"MovieLens-100K ships inside the recbole wheel, which is not installed: run "
            f"{MOVIELENS_INSTALL} (./dev does this)"
        ) from None
    path = Path(str(dist.locate_file(_MOVIELENS_DIR)))
    if not (path / "ml-100k.inter").is_file():
        raise DatasetError(f"{path} has no ml-100k.inter; reinstall with {MOVIELENS_INSTALL}")
    return path


def _atomic(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file (tab-separated, header ``name:type``)."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row, strict=False))


def rating_type(rating: float) -> str:
    """Our event type for a 1-5 star rating: 5 like, 4 click, 3 view, 1-2 dislike.

    >>> [rating_type(r) for r in (5, 4, 3, 2)]
    ['like', 'click', 'view', 'dislike']
    """
    return (
        "like" if rating >= 5 else "click" if rating >= 4 else "view" if rating >= 3 else "dislike"
    )


def _age_band(age: str) -> str:
    years = int(age) if age.isdigit() else -1
    if years < 0:
        return "unknown"
    return "<25" if years < 25 else "25-34" if years < 35 else "35-44" if years < 45 else "45+"


def load_movielens(path: Path | None = None) -> Replay:
    """MovieLens-100K (RecBole atomic files): 100,000 ratings of 1,682 films by 943 users.

    Items are ``title (year)`` with the genres as category (the first) and tags; users carry
    gender, age band and occupation for the user-fairness metrics.
    """
    path = path or movielens_dir()
    items = []
    for row in _atomic(path / "ml-100k.item"):
        genres = tuple(row.get("class", "").split())
        year = row.get("release_year", "")
        title = f"{row['movie_title']} ({year})" if year else row["movie_title"]
        items.append(ReplayItem(row["item_id"], title, "", genres[0] if genres else "", genres))
    events = [
        ReplayEvent(
            row["user_id"],
            rating_type(float(row["rating"])),
            row["item_id"],
            int(float(row["timestamp"]) * 1000),
            rating=float(row["rating"]),
        )
        for row in _atomic(path / "ml-100k.inter")
    ]
    events.sort(key=lambda e: (e.ts_ms, e.user_id))
    users = {
        row["user_id"]: {
            "gender": row.get("gender", ""),
            "age": _age_band(row.get("age", "")),
            "occupation": row.get("occupation", ""),
        }
        for row in _atomic(path / "ml-100k.user")
    }
    return Replay(MOVIELENS_NAME, items, list(events), users)


def load_replay(source: str | Path) -> Replay:
    """Load ``source``: ``ml-100k`` (built in), a MIND directory, a RecBole MovieLens directory
    or a directory in the topic schema — whichever its files say it is."""
    if str(source) == MOVIELENS_NAME and not Path(source).exists():
        return load_movielens()
    path = Path(source)
    if not path.is_dir():
        raise DatasetError(f"{path} is not a directory (nor the built-in {MOVIELENS_NAME!r})")
    if (path / "behaviors.tsv").is_file() and (path / "news.tsv").is_file():
        return load_mind(path)
    if (path / "ml-100k.inter").is_file():
        return load_movielens(path)
    return load_jsonl_dir(path)


def is_test_positive(event: ReplayEvent) -> bool:
    """Whether ``event`` is scored as a hit target (a click, like or share)."""
    return event.test and event.type in TEST_TYPES and event.item_id is not None
