"""Embedded synthetic video feed with known ground truth.

Users and items carry latent vectors. Part of each user's vector comes from their observable
attributes (age bucket, region) and part of each item's from its category, so features carry
signal, while the rest is individual and only learnable from ids and history. Per impression:

- click: ``p = sigmoid(c0 + a * s_click + b_user + b_item - beta * log2(1 + slot) + surface + hour)``
  where ``s_click = <u, v> / sqrt(d)`` is the click affinity (unit variance). The slot is random,
  or, with ``position_from_relevance`` r > 0, set by a logging ranker whose score has correlation
  r with the position-free logit, the rest its own taste for each item (unrelated to relevance)
  and noise (higher score, earlier slot): items the old ranker favoured collect clicks from their
  slots, and an item is seen in several slots.
- watch time: zero-inflated lognormal. ``P(watch > 0) = sigmoid(w0 + s_watch)`` and, when positive,
  ``log(watch) ~ N(log(duration) - 1 + 0.5 * s_watch, sigma^2)``. ``s_watch = <u, v_w> / sqrt(d)``
  with ``v_w = rho * v + sqrt(1 - rho^2) * v_perp``, so the two tasks' affinities have Pearson
  correlation ``rho`` (``task_correlation``), as in the MMoE paper's synthetic study
  (Ma et al., KDD 2018, sec. 3.2).

``c0`` and ``w0`` are calibrated on a pilot sample so the click rate and the share of zero watch
time match the config. The oracle table holds the true click probability and expected watch
time of every impression, so evaluation can report the best achievable AUC, and the click
probability the impression would have had in the top slot (``true_ctr_no_position``), what a
position-debiased model should rank by.

Output layout (written into a temporary directory, then renamed into place)::

    raw_dir/users.parquet  raw_dir/items.parquet  raw_dir/MANIFEST.json
    raw_dir/impressions/date=YYYY-MM-DD/part-NNNNN.parquet
    raw_dir/oracle/date=YYYY-MM-DD/part-NNNNN.parquet
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys_moe.atomic import write_parquet
from recsys_moe.config import SyntheticConfig

SURFACES = np.array(["feed", "follow", "search"])
SURFACE_SHARE = np.array([0.7, 0.2, 0.1])
SURFACE_EFFECT = np.array([0.0, 0.3, 0.6], dtype=np.float32)
MS_PER_DAY = 86_400_000
WATCH_LOG_OFFSET = -1.0
WATCH_AFFINITY_WEIGHT = 0.5


@dataclass
class World:
    """Latent state of the synthetic world: everything impressions are drawn from."""

    users: pl.DataFrame
    items: pl.DataFrame
    user_vec: np.ndarray
    user_bias: np.ndarray
    user_weight: np.ndarray
    item_vec: np.ndarray
    item_watch_vec: np.ndarray
    item_bias: np.ndarray
    item_weight: np.ndarray
    item_log_duration: np.ndarray
    item_logging_pref: np.ndarray
    """The logging ranker's own taste for each item, unrelated to relevance (ranked slots only)."""
    click_intercept: float = 0.0
    watch_intercept: float = 0.0


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _unit_normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def build_world(cfg: SyntheticConfig, seed: int) -> World:
    """Draw users, items and their latent vectors (deterministic in ``seed``)."""
    d = cfg.latent_dim
    rng = _rng(seed, 0)
    n_u, n_i = cfg.num_users, cfg.num_items

    age = rng.integers(0, 7, n_u)
    region = rng.integers(0, 20, n_u)
    gender = rng.integers(0, 3, n_u)
    device = rng.choice(np.array(["android", "ios", "web", "tv"]), n_u, p=[0.55, 0.3, 0.1, 0.05])
    age_vec, region_vec = _unit_normal(rng, 7, d), _unit_normal(rng, 20, d)
    w_attr = 0.3
    user_vec = (
        math.sqrt(w_attr) * (age_vec[age] + region_vec[region]) / math.sqrt(2.0)
        + math.sqrt(1 - w_attr) * _unit_normal(rng, n_u, d)
    )
    user_bias = (0.3 * rng.standard_normal(n_u)).astype(np.float32)
    activity = rng.lognormal(0.0, 1.0, n_u)
    users = pl.DataFrame(
        {
            "user_id": np.arange(n_u, dtype=np.int64),
            "gender": gender.astype(np.int64),
            "age_bucket": age.astype(np.int64),
            "region": region.astype(np.int64),
            "device": device,
            "account_age_days": rng.exponential(400.0, n_u).astype(np.float32),
            "follows": rng.poisson(activity * 20).astype(np.int64),
        }
    )

    cat_rank = np.arange(1, cfg.num_categories + 1)
    cat_p = 1.0 / cat_rank**0.7
    category = rng.choice(cfg.num_categories, n_i, p=cat_p / cat_p.sum())
    cat_vec = _unit_normal(rng, cfg.num_categories, d)
    w_cat = 0.5
    item_vec = math.sqrt(w_cat) * cat_vec[category] + math.sqrt(1 - w_cat) * _unit_normal(rng, n_i, d)
    rho = cfg.task_correlation
    item_watch_vec = rho * item_vec + math.sqrt(max(0.0, 1 - rho * rho)) * _unit_normal(rng, n_i, d)
    item_bias = (0.5 * rng.standard_normal(n_i)).astype(np.float32)
    # Zipf-like popularity over a random permutation of items.
    pop = 1.0 / np.arange(1, n_i + 1) ** 0.9
    item_weight = pop[rng.permutation(n_i)]
    duration = np.clip(rng.lognormal(math.log(30.0), 0.8, n_i), 3.0, 600.0).astype(np.float32)
    # Tags: 1-4 per item, mostly from the category's own slice of the tag vocabulary.
    n_tags = rng.integers(1, 5, n_i)
    tags_per_cat = max(1, cfg.num_tags // cfg.num_categories)
    own = (category[:, None] * tags_per_cat + rng.integers(0, tags_per_cat, (n_i, 4))) % cfg.num_tags
    other = rng.integers(0, cfg.num_tags, (n_i, 4))
    pick = np.where(rng.random((n_i, 4)) < 0.8, own, other)
    offsets = np.concatenate([[0], np.cumsum(n_tags)])
    flat = pick[np.arange(4)[None, :] < n_tags[:, None]].astype(np.int64)
    tags = pl.Series("tags", [flat[offsets[i] : offsets[i + 1]] for i in range(n_i)], dtype=pl.List(pl.Int64))
    items = pl.DataFrame(
        {
            "item_id": np.arange(n_i, dtype=np.int64),
            "category": category.astype(np.int64),
            "creator_id": rng.integers(0, cfg.num_creators, n_i).astype(np.int64),
            "duration_s": duration,
        }
    ).with_columns(tags)
    item_logging_pref = rng.standard_normal(n_i).astype(np.float32)  # drawn last: earlier draws stay as they were
    return World(
        users=users,
        items=items,
        user_vec=user_vec.astype(np.float32),
        user_bias=user_bias,
        user_weight=activity / activity.sum(),
        item_vec=item_vec.astype(np.float32),
        item_watch_vec=item_watch_vec.astype(np.float32),
        item_bias=item_bias,
        item_weight=item_weight / item_weight.sum(),
        item_log_duration=np.log(duration).astype(np.float32),
        item_logging_pref=item_logging_pref,
    )


@dataclass
class _Draw:
    user: np.ndarray
    item: np.ndarray
    position: np.ndarray
    surface: np.ndarray
    hour: np.ndarray
    click_rest: np.ndarray  # click logit without the intercept
    s_click: np.ndarray
    s_watch: np.ndarray


def _draw(world: World, cfg: SyntheticConfig, rng: np.random.Generator, n: int, hour: np.ndarray) -> _Draw:
    user = rng.choice(len(world.user_bias), n, p=world.user_weight)
    item = rng.choice(len(world.item_bias), n, p=world.item_weight)
    position = rng.integers(0, cfg.slots_per_page, n)
    surface = rng.choice(len(SURFACES), n, p=SURFACE_SHARE)
    scale = 1.0 / math.sqrt(cfg.latent_dim)
    uv = world.user_vec[user]
    s_click = np.einsum("nd,nd->n", uv, world.item_vec[item]) * scale
    s_watch = np.einsum("nd,nd->n", uv, world.item_watch_vec[item]) * scale
    relevance = (
        cfg.affinity_scale * s_click
        + world.user_bias[user]
        + world.item_bias[item]
        + SURFACE_EFFECT[surface]
        + 0.2 * np.sin(2 * np.pi * hour / 24.0)
    )
    r = cfg.position_from_relevance
    if r > 0:  # the logging ranker: relevance, its own per-item taste and noise; the score's quantile sets the slot
        z = (relevance - relevance.mean()) / max(float(relevance.std()), 1e-9)
        rest = (world.item_logging_pref[item] + rng.standard_normal(n)) / math.sqrt(2.0)
        score = r * z + math.sqrt(1 - r * r) * rest
        rank = np.argsort(np.argsort(-score, kind="stable"), kind="stable")
        position = (rank * cfg.slots_per_page // n).astype(np.int64)
    rest = (relevance - cfg.position_bias * np.log2(1.0 + position)).astype(np.float32)
    return _Draw(user, item, position, surface, hour, rest, s_click, s_watch)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(rest: np.ndarray, target: float) -> float:
    """Intercept c such that mean(sigmoid(c + rest)) == target (bisection, monotone)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _sigmoid(mid + rest).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def calibrate(world: World, cfg: SyntheticConfig, seed: int, n: int = 200_000) -> None:
    """Set the click and watch intercepts so rates match the config on a pilot sample."""
    rng = _rng(seed, 1)
    draw = _draw(world, cfg, rng, n, rng.uniform(0, 24, n))
    world.click_intercept = _solve_intercept(draw.click_rest, cfg.click_rate)
    world.watch_intercept = _solve_intercept(draw.s_watch, 1.0 - cfg.watch_zero_share)


def impressions_chunk(
    world: World, cfg: SyntheticConfig, seed: int, day: int, chunk: int, n: int,
    start_ms: int, end_ms: int, first_id: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Draw ``n`` impressions between ``start_ms`` and ``end_ms``; return (impressions, oracle)."""
    rng = _rng(seed, 2, day, chunk)
    ts = np.sort(rng.integers(start_ms, end_ms, n))
    hour = ((ts % MS_PER_DAY) / 3_600_000.0).astype(np.float32)
    dr = _draw(world, cfg, rng, n, hour)
    p_click = _sigmoid(world.click_intercept + dr.click_rest)
    click = (rng.random(n) < p_click).astype(np.int8)
    p_watch = _sigmoid(world.watch_intercept + dr.s_watch)
    mu = world.item_log_duration[dr.item] + WATCH_LOG_OFFSET + WATCH_AFFINITY_WEIGHT * dr.s_watch
    positive = rng.random(n) < p_watch
    watch = np.where(positive, np.exp(mu + cfg.watch_sigma * rng.standard_normal(n)), 0.0)
    expected_watch = p_watch * np.exp(mu + 0.5 * cfg.watch_sigma**2)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    imp = pl.DataFrame(
        {
            "impression_id": ids,
            "user_id": dr.user.astype(np.int64),
            "item_id": dr.item.astype(np.int64),
            "timestamp": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC")),
            "position": dr.position.astype(np.int32),
            "surface": SURFACES[dr.surface],
            "click": click,
            "watch_time_s": watch.astype(np.float32),
        }
    )
    oracle = pl.DataFrame(
        {
            "impression_id": ids,
            "true_ctr": p_click.astype(np.float32),
            "true_watch_time_s": expected_watch.astype(np.float32),
            "true_ctr_no_position": _sigmoid(world.click_intercept + dr.click_rest
                                             + cfg.position_bias * np.log2(1.0 + dr.position)).astype(np.float32),
            "click_affinity": dr.s_click.astype(np.float32),
            "watch_affinity": dr.s_watch.astype(np.float32),
        }
    )
    return imp, oracle


@dataclass
class SynthSummary:
    out_dir: Path
    impressions: int
    users: int
    items: int
    click_rate: float
    watch_zero_share: float
    parts: int


def _day_plan(cfg: SyntheticConfig) -> list[tuple[dt.date, list[int]]]:
    base, extra = divmod(cfg.num_impressions, cfg.num_days)
    plan = []
    for d in range(cfg.num_days):
        rows = base + (1 if d < extra else 0)
        sizes = [cfg.chunk_rows] * (rows // cfg.chunk_rows)
        if rows % cfg.chunk_rows:
            sizes.append(rows % cfg.chunk_rows)
        plan.append((cfg.start_date + dt.timedelta(days=d), sizes))
    return plan


def generate(
    cfg: SyntheticConfig,
    seed: int,
    out_dir: Path,
    overwrite: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> SynthSummary:
    """Write the synthetic raw tables to ``out_dir`` atomically (temp directory, then rename).

    Memory is bounded by ``cfg.chunk_rows``: each part is drawn, written and dropped.
    ``on_rows(n)`` is called after each part (for progress bars).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        world = build_world(cfg, seed)
        calibrate(world, cfg, seed)
        write_parquet(world.users, tmp / "users.parquet")
        write_parquet(world.items, tmp / "items.parquet")
        next_id, clicks, zeros, parts = 0, 0, 0, 0
        for day_idx, (day, sizes) in enumerate(_day_plan(cfg)):
            day_ms = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
            for dirname in ("impressions", "oracle"):
                (tmp / dirname / f"date={day.isoformat()}").mkdir(parents=True)
            bounds = np.linspace(day_ms, day_ms + MS_PER_DAY, len(sizes) + 1).astype(np.int64)
            for k, n in enumerate(sizes):
                imp, oracle = impressions_chunk(
                    world, cfg, seed, day_idx, k, n, int(bounds[k]), int(bounds[k + 1]), next_id
                )
                name = f"date={day.isoformat()}/part-{k:05d}.parquet"
                write_parquet(imp, tmp / "impressions" / name)
                write_parquet(oracle, tmp / "oracle" / name)
                clicks += int(imp["click"].sum())
                zeros += int((imp["watch_time_s"] == 0).sum())
                next_id += n
                parts += 1
                if on_rows:
                    on_rows(n)
        summary = SynthSummary(
            out_dir=out_dir, impressions=next_id, users=cfg.num_users, items=cfg.num_items,
            click_rate=clicks / next_id, watch_zero_share=zeros / next_id, parts=parts,
        )
        manifest = {
            "source": "synthetic",
            "seed": seed,
            "config": cfg.model_dump(mode="json"),
            "impressions": next_id,
            "parts": parts,
            "click_rate": summary.click_rate,
            "watch_zero_share": summary.watch_zero_share,
            "click_intercept": world.click_intercept,
            "watch_intercept": world.watch_intercept,
        }
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
        return summary
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
