"""``python -m streams.interest_check``: planted-stream checks of multi-interest and groups.

Replays the planted synthetic stream through the in-process engine (the worker's own state
update and ranking, real encoder vectors) once with one vector per user and once with several
interests, and prints, per setting, the share of two-interest users whose top-10 holds both
planted categories and the planted share of everyone's top-10; then how well online user
groups (two simulated workers syncing, as in ``state.groups``) recover the planted category of
single-interest users (adjusted Rand index).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from encoders.registry import resolve_model_dir
from encoders.text import TextEncoder
from state.catalogue import Catalogue
from state.engine import Engine, EngineConfig, Interaction
from state.groups import LocalGroups, SharedGroups, adjusted_rand_index, merge
from state.interest import UserState, normalised
from streams.synthetic import SyntheticWorld, events, make_world


def check(n_items: int, n_users: int, n_events: int, settings: list[int]) -> list[str]:
    """One line of figures per ``max_interests`` setting."""
    world = make_world(n_items, n_users, seed=5)
    encoder = TextEncoder(resolve_model_dir(""), device="auto")
    vectors = encoder.encode([item["title"] for item in world.items], batch_size=32)
    stream = list(events(world, n_events, seed=9))
    lines = []
    for max_interests in settings:
        catalogue = Catalogue(encoder.dim, encoder.version)
        for item, vec in zip(world.items, vectors, strict=True):
            catalogue.upsert(item["item_id"], vec, version=encoder.version, title=item["title"])
        engine = Engine(catalogue, EngineConfig(max_interests=max_interests))
        states: dict[str, UserState] = {}
        for n, ev in enumerate(tqdm(stream, desc=f"max_interests={max_interests}", unit="ev")):
            state = states.setdefault(ev["user_id"], engine.new_state())
            engine.apply(
                state,
                Interaction(
                    ev["user_id"], ev["type"], ev["item_id"], ev["ts"], ev.get("dwell_ms"), 0, n
                ),
            )
        users = list(states.items())
        started = time.perf_counter()
        ranked = engine.rank(users, 10)
        rank_us = 1e6 * (time.perf_counter() - started) / len(users)
        cats = {r.user_id: [world.category_of[i] for i, _ in r.items] for r in ranked}
        two = [u for u in cats if len(world.users[u]) == 2]
        both = np.mean([set(world.users[u]) <= set(cats[u]) for u in two])
        share = np.mean([np.mean([c in world.users[u] for c in cats[u]]) for u in cats])
        if max_interests > 1:
            lines.append(_groups_line(world, states))
        lines.append(
            f"max_interests={max_interests}: both planted interests in top-10 for {both:.1%} "
            f"of {len(two)} two-interest users; planted share of top-10 {share:.1%}; "
            f"ranking {rank_us:.0f} us/user"
        )
    return lines


def _groups_line(world: SyntheticWorld, states: dict[str, UserState]) -> str:
    users = [u for u in states if len(world.users[u]) == 1]
    vecs = np.stack([normalised(states[u].vec) for u in users])
    shared = SharedGroups.empty(16, vecs.shape[1])
    for start in range(0, len(vecs), 100):  # two workers, a sync after every 100 users
        workers = [LocalGroups(shared), LocalGroups(shared)]
        workers[0].learn_many(vecs[start : start + 100 : 2])
        workers[1].learn_many(vecs[start + 1 : start + 100 : 2])
        for worker in workers:
            shared = merge(shared, worker)
    found = shared.assign(vecs).tolist()
    ari = adjusted_rand_index([world.users[u][0] for u in users], found)
    return (
        f"groups: adjusted Rand index {ari:.2f} against the planted categories of "
        f"{len(users)} single-interest users ({int(shared.seeded.sum())} groups of 16 seeded)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    for line in check(args.items, args.users, args.events, [1, 4]):
        print(line)


if __name__ == "__main__":
    main()
