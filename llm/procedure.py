"""The docs/llm.md procedure as pure steps: item text, candidate selection, chunk prompts,
reading decisions off answers or a train_augment, the relabel rule, agreement.

refine_llm.py drives these steps (backends, cache, files); everything here is
deterministic and reads no model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.items import read_train
from data.schema import ITEM_COL, RATING_COL, USER_COL, DataError, sorted_ids
from llm.prompts import PromptTemplate, item_text, parse_answer

POSITIVE, NEGATIVE = 4.5, 0.5


def sorted_users(users: pd.Series) -> list[str]:
    """Unique user ids in the project's one order (data.schema.sorted_ids)."""
    return list(sorted_ids(users))


# ----------------------------------------------------------------------------- plan

@dataclass
class UserPlan:
    """What the procedure's steps 1-3 (docs/llm.md) make of one user; lists hold item ids."""

    user: str
    mean: float
    positives: list[str]
    examples: list[str]
    example_answer: list[str]
    candidates: list[str]
    missing_text: int = 0


def plan_users(train: pd.DataFrame, texts: dict, seed: int) -> list[UserPlan]:
    """Steps 1-3 of the procedure (docs/llm.md) for every user, in ascending user order.

    Rows are ordered by item popularity (train rows per item), descending, ties in file
    order; mean >= 3: examples = r4 + r2 + r1, candidates = r3; else examples = r4 + r1,
    candidates = r3 + r2. One ``numpy.random.seed(seed)``, then per user the examples and
    then the candidates are shuffled. Items without text are left out (counted).
    """
    popularity = train[ITEM_COL].map(train[ITEM_COL].value_counts()).to_numpy()
    order = np.argsort(-popularity, kind="stable")
    ordered = train.iloc[order]
    by_user = {u: g for u, g in ordered.groupby(USER_COL, sort=False)}
    np.random.seed(seed)
    plans = []
    for user in sorted_users(train[USER_COL]):
        rows = by_user[user]
        ratings = rows[RATING_COL].to_numpy()
        items = rows[ITEM_COL].to_numpy()
        has_text = np.array([i in texts for i in items], dtype=bool)
        group = {r: [i for i, x, t in zip(items, ratings, has_text) if x == r and t]
                 for r in (5.0, 4.0, 3.0, 2.0, 1.0)}
        mean = float(ratings.mean())
        if mean >= 3:
            examples, candidates = group[4.0] + group[2.0] + group[1.0], group[3.0]
        else:
            examples, candidates = group[4.0] + group[1.0], group[3.0] + group[2.0]
        np.random.shuffle(examples)
        np.random.shuffle(candidates)
        liked4 = set(group[4.0])
        missing = int((~has_text & np.isin(ratings, (2.0, 3.0))).sum())
        plans.append(UserPlan(user, mean, group[5.0], examples,
                              [i for i in examples if i in liked4], candidates, missing))
    return plans


@dataclass
class Request:
    """One chunk of one user: what a backend answers, with its cache key. The prompt is
    rendered on demand (``prompt(layout)``); the prompt arguments share the user's lists."""

    user: str
    items: list[str]
    template: PromptTemplate = field(repr=False)
    args: dict = field(repr=False)
    context: dict = field(repr=False)
    key: str = ""

    def prompt(self, layout: str) -> str:
        return self.template.render(layout, **self.args)


def build_requests(plans: list[UserPlan], texts: dict, cfg) -> list[Request]:
    """One request per chunk of ``cfg.chunk_size`` candidates (``cfg``: a RefineConfig).

    Cache key: user, chunk items, template digest, model id and the hash of the main
    prompt (so a changed item text or example list is a different question)."""
    template = cfg.prompt_template
    full = {i: item_text(*texts[i]) for i in texts}
    bare = {i: item_text(texts[i][0], None) for i in texts}
    requests = []
    for plan in plans:
        shared = dict(dataset=cfg.dataset, positives=[full[i] for i in plan.positives],
                      example_candidates=[full[i] for i in plan.examples],
                      example_answer=[bare[i] for i in plan.example_answer])
        for start in range(0, len(plan.candidates), cfg.chunk_size):
            chunk = plan.candidates[start:start + cfg.chunk_size]
            args = dict(shared, candidates=[full[i] for i in chunk])
            main = template.render("main", **args)
            key_text = json.dumps([plan.user, chunk, template.digest, cfg.model_id(),
                                   hashlib.sha256(main.encode()).hexdigest()])
            context = dict(positives=plan.positives, examples=plan.examples,
                           example_answer=plan.example_answer, candidates=chunk)
            requests.append(Request(plan.user, chunk, template, args, context,
                                    hashlib.sha256(key_text.encode()).hexdigest()[:32]))
    return requests


# ----------------------------------------------------------------------------- decisions

def decisions_from_records(records, train: pd.DataFrame, texts: dict) -> dict[str, set[str]]:
    """Refined user -> selected item ids, from cache records (docs/llm.md).

    A user with at least one answered line starting with "[" is refined; each of the
    user's 2/3 rows whose title text is among the parsed titles is selected.
    """
    titles: dict[str, set[str]] = {}
    for record in records:
        if record.get("status") != "answered":
            continue
        n_lines, chosen = parse_answer(record["answer"])
        if n_lines:
            titles.setdefault(record["user"], set()).update(chosen)
    low = train[train[RATING_COL].isin((2.0, 3.0))]
    decisions = {user: set() for user in titles}
    for user, item in zip(low[USER_COL], low[ITEM_COL]):
        if user in titles and item in texts and texts[item][0] in titles[user]:
            decisions[user].add(item)
    return decisions


def decisions_from_augment(train: pd.DataFrame, augment_path: Path) -> dict[str, set[str]]:
    """Read the decisions off a train_augment CSV: users whose 2/3 rows were changed are
    refined; rows at 4.5 are selected."""
    augment = read_train(augment_path)
    if len(augment) != len(train) or not (
            (augment[USER_COL].to_numpy() == train[USER_COL].to_numpy()).all()
            and (augment[ITEM_COL].to_numpy() == train[ITEM_COL].to_numpy()).all()):
        raise DataError(f"{augment_path}: rows differ from train_original (not its augment?)")
    low = train[RATING_COL].isin((2.0, 3.0)).to_numpy()
    new = augment[RATING_COL].to_numpy()
    changed = low & (new != train[RATING_COL].to_numpy())
    decisions = {u: set() for u in pd.unique(train[USER_COL].to_numpy()[changed])}
    for user, item in zip(train[USER_COL].to_numpy()[changed & (new == POSITIVE)],
                          train[ITEM_COL].to_numpy()[changed & (new == POSITIVE)]):
        decisions[user].add(item)
    return decisions


def relabel(train: pd.DataFrame, decisions: dict[str, set[str]], texts: dict | None = None,
            scope: set[str] | None = None) -> tuple[np.ndarray, dict]:
    """New ratings (docs/llm.md): refined users' 2/3 rows -> 4.5 if selected else 0.5;
    everything else unchanged. With ``texts``, 2/3 rows of items without text keep their
    rating (they were never asked). Counts cover the users in ``scope`` (default: all)."""
    ratings = train[RATING_COL].to_numpy().copy()
    low = np.isin(ratings, (2.0, 3.0))
    users, items = train[USER_COL].to_numpy(), train[ITEM_COL].to_numpy()
    refined = np.array([u in decisions for u in users], dtype=bool) & low
    if texts is not None:
        refined &= np.array([i in texts for i in items], dtype=bool)
    selected = np.array([r and i in decisions[u] for r, u, i in zip(refined, users, items)],
                        dtype=bool)
    ratings[refined] = NEGATIVE
    ratings[selected] = POSITIVE
    if scope is not None:
        in_scope = np.array([u in scope for u in users], dtype=bool)
        low, refined, selected = low & in_scope, refined & in_scope, selected & in_scope
    low_users = set(users[low])
    counts = dict(rows_low=int(low.sum()), rows_to_4_5=int(selected.sum()),
                  rows_to_0_5=int((refined & ~selected).sum()), rows_low_kept=int((low & ~refined).sum()),
                  users_with_low=len(low_users), users_refined=len(low_users & set(decisions)),
                  users_unrefined=len(low_users - set(decisions)))
    return ratings, counts


def agreement(original: pd.DataFrame, ours: np.ndarray, reference_path: Path) -> dict:
    """Agreement of our 2/3 decisions with a reference train_augment, over the 2/3 rows
    refined in both (accuracy; precision/recall/F1 of "-> 4.5")."""
    ref = read_train(reference_path)[RATING_COL].to_numpy()
    if len(ref) != len(original):
        raise DataError(f"{reference_path}: {len(ref)} rows, train_original has {len(original)}")
    low = original[RATING_COL].isin((2.0, 3.0)).to_numpy()
    both = low & np.isin(ours, (POSITIVE, NEGATIVE)) & np.isin(ref, (POSITIVE, NEGATIVE))
    p, r = ours[both] == POSITIVE, ref[both] == POSITIVE
    tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
    n = int(both.sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return dict(rows_compared=n, accuracy=float((p == r).mean()) if n else float("nan"),
                precision=precision, recall=recall,
                f1=2 * precision * recall / (precision + recall) if tp else 0.0,
                reference_positive_rate=float(r.mean()) if n else float("nan"),
                ours_positive_rate=float(p.mean()) if n else float("nan"),
                rows_refined_only_ours=int((low & np.isin(ours, (POSITIVE, NEGATIVE)) & ~both).sum()),
                rows_refined_only_reference=int((low & np.isin(ref, (POSITIVE, NEGATIVE)) & ~both).sum()))
