"""Synthetic news-like data with planted interests, for the demo, the tests and the benchmark.

Items get titles from per-category vocabularies (so a real text encoder separates them);
users get one or two planted categories and mostly click within them. The planted truth is
returned so tests can check that it shows up in the recommendations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "football": (
        [
            "Striker",
            "Goalkeeper",
            "Premier League side",
            "Champions League club",
            "Midfielder",
            "Football manager",
            "Penalty shootout",
            "World Cup squad",
        ],
        [
            "scores twice in derby win",
            "signs new contract before transfer deadline",
            "suffers hamstring injury ahead of final",
            "wins the league title on goal difference",
            "sacked after run of defeats",
            "clinches late equaliser at the stadium",
        ],
    ),
    "cooking": (
        [
            "Sourdough bread",
            "Vegetarian curry",
            "Chocolate cake",
            "Pasta sauce",
            "Roast chicken",
            "Street food stall",
            "Pastry chef",
            "Home baker",
        ],
        [
            "recipe ready in thirty minutes",
            "tips for a crispy crust in the oven",
            "wins baking competition with family recipe",
            "simple weeknight dinner with garlic",
            "how to season and simmer for flavour",
            "kitchen trick for tender meat",
        ],
    ),
    "finance": (
        [
            "Central bank",
            "Stock market",
            "Bond yields",
            "Tech shares",
            "Mortgage rates",
            "Pension fund",
            "Inflation figures",
            "Currency traders",
        ],
        [
            "rally as interest rate cut looms",
            "fall after weak earnings report",
            "investors brace for recession risk",
            "hits record as quarterly profits beat forecasts",
            "regulators probe trading losses",
            "dividend payout raised for shareholders",
        ],
    ),
    "technology": (
        [
            "Smartphone maker",
            "Chip designer",
            "AI startup",
            "Open source project",
            "Cloud provider",
            "Laptop",
            "Software update",
            "Cybersecurity firm",
        ],
        [
            "unveils faster processor",
            "patches critical security vulnerability",
            "launches new machine learning model",
            "raises funding to build data centres",
            "review: battery life and display tested",
            "releases developer tools for programmers",
        ],
    ),
    "travel": (
        [
            "Island resort",
            "Budget airline",
            "Mountain village",
            "City break",
            "Road trip",
            "Beach holiday",
            "Train journey",
            "Backpacker hostel",
        ],
        [
            "guide to hidden beaches and hiking trails",
            "cheap flights for summer vacation",
            "best hotels for a weekend getaway",
            "passport and visa tips for tourists",
            "scenic routes through the countryside",
            "where to stay and what to see",
        ],
    ),
    "health": (
        [
            "Sleep study",
            "Heart disease",
            "Running coach",
            "Nutritionists",
            "Vaccine trial",
            "Mental health charity",
            "Hospital doctors",
            "Yoga teacher",
        ],
        [
            "finds exercise lowers blood pressure",
            "warns about sugar in children's diets",
            "shares workout plan for beginners",
            "reports breakthrough in cancer treatment",
            "advice on anxiety and stress",
            "says daily walking improves fitness",
        ],
    ),
    "music": (
        [
            "Rock band",
            "Pop singer",
            "Jazz pianist",
            "Hip hop artist",
            "Orchestra",
            "Indie guitarist",
            "Music festival",
            "Record label",
        ],
        [
            "announces world tour dates",
            "releases long-awaited new album",
            "headlines sold-out concert",
            "tops the charts with debut single",
            "wins award for best live performance",
            "records acoustic session in studio",
        ],
    ),
    "science": (
        [
            "Astronomers",
            "Physicists",
            "Space telescope",
            "Climate scientists",
            "Marine biologists",
            "Mars rover",
            "Particle collider",
            "Genetics lab",
        ],
        [
            "discover distant exoplanet orbiting star",
            "measure quantum effect in experiment",
            "capture images of galaxy formation",
            "publish study on ocean warming",
            "identify new species in deep sea",
            "map genome of ancient organism",
        ],
    ),
}


@dataclass
class SyntheticWorld:
    """A generated catalogue, users and their planted categories."""

    items: list[dict[str, Any]]
    users: dict[str, list[str]]  # user -> planted categories
    by_category: dict[str, list[str]] = field(default_factory=dict)
    category_of: dict[str, str] = field(default_factory=dict)


def make_world(
    n_items: int,
    n_users: int,
    seed: int = 7,
    two_interest_share: float = 0.3,
    start_ms: int = 1_767_225_600_000,
) -> SyntheticWorld:
    """``n_items`` news items over :data:`CATEGORIES` and ``n_users`` users with planted tastes."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    cats = list(CATEGORIES)
    items: list[dict[str, Any]] = []
    world = SyntheticWorld(items, {}, {c: [] for c in cats}, {})
    for i in range(n_items):
        cat = cats[i % len(cats)]
        subjects, phrases = CATEGORIES[cat]
        item_id = f"i{i:06d}"
        title = f"{rng.choice(subjects)} {rng.choice(phrases)}"
        items.append(
            {
                "item_id": item_id,
                "title": title,
                "category": cat,
                "created_at": start_ms - rng.randrange(0, 86_400_000),
            }
        )
        world.by_category[cat].append(item_id)
        world.category_of[item_id] = cat
    for u in range(n_users):
        k = 2 if rng.random() < two_interest_share else 1
        world.users[f"u{u:06d}"] = rng.sample(cats, k)
    return world


def events(
    world: SyntheticWorld,
    n_events: int,
    seed: int = 11,
    focus: float = 0.85,
    start_ms: int = 1_767_225_600_000,
    step_ms: int = 1000,
    users: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """A stream of events in which users mostly engage with their planted categories."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    pool = users or list(world.users)
    cats = list(world.by_category)
    for n in range(n_events):
        user = rng.choice(pool)
        interests = world.users[user]
        on_topic = rng.random() < focus
        cat = rng.choice(interests) if on_topic else rng.choice(cats)
        candidates = world.by_category[cat]
        # Zipf-like skew: a few items per category are much more popular.
        item = candidates[
            min(int(rng.paretovariate(1.2)) - 1, len(candidates) - 1)
            if rng.random() < 0.5
            else rng.randrange(len(candidates))
        ]
        r = rng.random()
        if not on_topic:
            etype = "impression" if r < 0.7 else ("dislike" if r < 0.8 else "view")
        else:
            etype = (
                "click"
                if r < 0.55
                else "view"
                if r < 0.8
                else "like"
                if r < 0.9
                else "share"
                if r < 0.95
                else "impression"
            )
        ev: dict[str, Any] = {
            "event_id": f"e{seed}-{n}",
            "user_id": user,
            "type": etype,
            "item_id": item,
            "ts": start_ms + n * step_ms,
        }
        if etype in ("view", "click") and rng.random() < 0.5:
            ev["dwell_ms"] = rng.randrange(1000, 60_000)
        yield ev


@dataclass
class PlantedStream:
    """A replay with planted interests, drift and cold-start users, and its ground truth.

    ``segments`` says which users are ``stable``, ``drifting`` (their planted categories change
    once, at ``drift_at_ms``) or ``cold-start`` (first seen in the second half of the stream).
    """

    world: SyntheticWorld
    events: list[dict[str, Any]]
    segments: dict[str, str]
    after_drift: dict[str, list[str]]
    drift_at_ms: int


def planted_stream(
    n_items: int = 2000,
    n_users: int = 500,
    n_events: int = 20_000,
    seed: int = 7,
    drift_share: float = 0.3,
    cold_share: float = 0.2,
    focus: float = 0.85,
    start_ms: int = 1_767_225_600_000,
    step_ms: int = 30_000,
) -> PlantedStream:
    """Events in which users mostly engage with planted categories, some drifting mid-stream.

    Off-topic items are mostly impressions (and some dislikes), so impressions give AUC its
    negatives. Drifting users switch to fresh categories halfway; cold-start users arrive then.
    """
    world = make_world(n_items, n_users, seed=seed, start_ms=start_ms)
    rng = random.Random(seed + 1)  # noqa: S311 - synthetic data, not security
    cats = list(world.by_category)
    users = list(world.users)
    segments: dict[str, str] = {}
    after: dict[str, list[str]] = {}
    for user in users:
        r = rng.random()
        if r < drift_share:
            segments[user] = "drifting"
            after[user] = rng.sample([c for c in cats if c not in world.users[user]], 1)
        elif r < drift_share + cold_share:
            segments[user] = "cold-start"
        else:
            segments[user] = "stable"
    half = n_events // 2
    early = [u for u in users if segments[u] != "cold-start"]
    out: list[dict[str, Any]] = []
    for n in range(n_events):
        user = rng.choice(users if n >= half else early)
        interests = after[user] if n >= half and user in after else world.users[user]
        on_topic = rng.random() < focus
        cat = rng.choice(interests) if on_topic else rng.choice(cats)
        pool = world.by_category[cat]
        item = pool[
            min(int(rng.paretovariate(1.2)) - 1, len(pool) - 1)
            if rng.random() < 0.5
            else rng.randrange(len(pool))
        ]
        r = rng.random()
        if on_topic:
            etype = "click" if r < 0.6 else "like" if r < 0.75 else "share" if r < 0.8 else "view"
        else:
            etype = "impression" if r < 0.8 else "dislike" if r < 0.9 else "view"
        out.append(
            {
                "event_id": f"p{seed}-{n}",
                "user_id": user,
                "type": etype,
                "item_id": item,
                "ts": start_ms + n * step_ms,
            }
        )
    return PlantedStream(world, out, segments, after, start_ms + half * step_ms)


def write_replay(stream: PlantedStream, directory: Path) -> Path:
    """Write ``stream`` as a replay directory in the topic schema (items, events, users)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "items.jsonl").open("wb") as fh:
        fh.writelines(orjson.dumps(item) + b"\n" for item in stream.world.items)
    with (directory / "events.jsonl").open("wb") as fh:
        fh.writelines(orjson.dumps(ev) + b"\n" for ev in stream.events)
    users = {u: {"segment": s} for u, s in stream.segments.items()}
    (directory / "users.json").write_bytes(orjson.dumps(users))
    return directory
