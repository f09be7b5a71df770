"""The simulated world behind the embedded default data: users, items and domains, advanced one
day at a time, and the natural and ad impressions each day samples (data.simulator writes them).

The world it models (each piece has a knob in `SimConfig`):

- Users have a profile (gender, age level, city tier), an activity level (lognormal;
  `activity_sigma`) that sets how often they show up, and a long-term interest vector in
  R^latent_dim, partly set by the profile (`profile_interest_share`) and partly individual.
  The interest drifts day to day as an AR(1) process (`drift`), and each day adds
  short-term noise on top (`short_term_noise`). The user segment (`segments`) is derived
  from age group and activity tier, so it is a property of the user.
- Users engage with categories in the background every day (`engage_rate`, sharpness
  `hist_sharpness`, off-interest share `hist_noise`); the last 5 engagements are the
  `hist_categories` of a row. New users start with an empty history.
- Items have a category, a brand (brands belong to a home category; brand popularity is
  Zipf-like), a lognormal price set per category, a latent vector (category vector + brand
  vector + individual noise) and a small popularity bias (`item_bias_std`). A share of the
  items are ads (`ad_item_share`); ad items are shown in natural traffic too.
- A domain is scenario x position x user segment. Each domain weighs the latent dimensions
  its own way (a scenario-level weighting shared by the scenario's domains,
  `scenario_weight_std`, plus a per-domain part, `domain_weight_std`) and has its own CTR
  offset (`scenario_ctr_std` + `domain_ctr_std`); lower positions are clicked less
  (`position_decay`). Domain sizes are Zipf-like (`domain_zipf`) over a seeded permutation
  of the domains: a few are large, hundreds are small.
- Click probability = sigmoid(global offset + [ad offset] + domain offset + position effect
  + interaction_scale * <domain_weight * interest_today, item_vector> / sqrt(latent_dim)
  + item popularity bias).
- Natural traffic picks the item with a targeted policy: `natural_candidates` random
  candidates, chosen by softmax of a noisy relevance estimate (`policy_noise`) at
  `natural_temperature`. Ad traffic picks among ad items only, with fewer candidates
  (`ad_candidates`) and a higher temperature (`ad_temperature`); ads are clicked less
  (`ad_ctr_offset`) and reach fewer users: each day only a share `ad_daily_reach` of the
  users is eligible, favouring users with a long history (`ad_history_days`).
- New users and items arrive every day (`new_users_per_day`, `new_items_per_day`).
- Intermittent users (off by default): a present user leaves for a while with daily chance
  `away_rate` and comes back with daily chance `return_rate` (mean absence 1/return_rate
  days), as holiday, seasonal and lapsed customers do; while away they neither show up nor
  engage, and their long-term interest keeps its slow drift, so they return with the tastes
  they left with. This is the traffic where only long-term (TPM) knowledge describes a user.

It models the world, never a method: no knob exists to make one model win. Every random draw
comes from a stream keyed by the seed, its purpose and the day, so a seed gives the same world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SOURCES = ("natural", "ad")
HIST_LEN = 5  # length of the recent-engagement buffer behind hist_categories
AGE_LEVELS = 7
CITY_TIERS = 4
_AGE_PROBS = np.array([0.06, 0.18, 0.24, 0.21, 0.15, 0.10, 0.06])
_CITY_PROBS = np.array([0.15, 0.30, 0.30, 0.25])
_FEMALE_SHARE = 0.55
_SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulated world; each comment says which real-world structure it models."""

    seed: int = 0  # random seed: same seed + config + dates -> byte-identical logs
    # --- sizes ---
    users: int = 20000  # initial user population
    items: int = 5000  # initial item pool
    new_users_per_day: int = 200  # users arriving each day (cold-start users)
    new_items_per_day: int = 50  # items listed each day (cold-start items)
    natural_rows_per_day: int = 6000  # organic impressions logged per day
    ad_ratio: float = 0.1  # ad rows per day = natural rows * ad_ratio (<= 0.1: natural >= 10x ad)
    # --- items ---
    ad_item_share: float = 0.15  # share of items that are ads (they also appear organically)
    categories: int = 50  # item categories
    brands: int = 500  # brands, each with a home category
    brand_zipf: float = 1.0  # Zipf exponent of brand popularity among listed items
    price_sigma: float = 0.7  # lognormal spread of prices within a category
    item_bias_std: float = 0.3  # item popularity/quality bias on the click logit
    # --- users ---
    latent_dim: int = 8  # dimensions of interest / item latent space
    profile_interest_share: float = 0.5  # share of long-term interest explained by profile
    drift: float = 0.05  # daily AR(1) innovation of long-term interest (std, stationary)
    short_term_noise: float = 0.3  # daily short-term interest noise around long-term interest
    activity_sigma: float = 1.0  # lognormal sigma of user activity (how often users appear)
    initial_tenure_days: float = 180.0  # mean age of the initial users' accounts, days
    engage_rate: float = 0.3  # background category engagements per unit activity per day
    hist_sharpness: float = 1.5  # how strongly engaged categories follow the user's interest
    hist_noise: float = 0.2  # share of engagements with a random category
    # --- domains ---
    scenarios: int = 12  # scenarios (pages / channels)
    positions: int = 5  # slot positions in a page
    segments: int = 6  # user segments: (segments // 2) age groups x 2 activity tiers
    domain_zipf: float = 1.1  # Zipf exponent of domain sizes (long tail of small domains)
    scenario_weight_std: float = 0.5  # how differently scenarios weigh latent dimensions
    domain_weight_std: float = 0.2  # per-domain weighting on top of its scenario's
    scenario_ctr_std: float = 0.4  # CTR offset spread between scenarios (logit)
    domain_ctr_std: float = 0.3  # CTR offset spread between domains of a scenario (logit)
    position_decay: float = 0.15  # logit lost per slot below the top position
    # --- clicks and serving policies ---
    ctr_offset: float = -4.6  # global click logit offset (sets the overall CTR level)
    interaction_scale: float = 0.7  # strength of user-item affinity in the click logit
    ad_ctr_offset: float = -0.3  # extra click logit of ad impressions (ad blindness)
    policy_noise: float = 1.0  # error of the serving policies' relevance estimate (logit)
    natural_candidates: int = 16  # candidates the organic recommender scores per impression
    natural_temperature: float = 1.0  # softmax temperature of the organic recommender
    ad_candidates: int = 4  # candidates the ad policy scores per impression
    ad_temperature: float = 3.0  # softmax temperature of the (less targeted) ad policy
    ad_daily_reach: float = 0.2  # share of users eligible for ads on a given day
    ad_history_days: float = 30.0  # tenure scale: ads favour users with a long history
    # --- intermittent users (off by default, so the benchmarks' worlds stay as they were) ---
    away_rate: float = 0.0  # daily chance a present user leaves for a while (holidays,
    #   seasonal or lapsed shoppers); away users neither show up nor engage
    return_rate: float = 0.05  # daily chance an away user comes back, with the long-term
    #   tastes they left with (interest keeps its slow drift while away)
    # --- output ---
    compresslevel: int = 3  # gzip level of the written files

    def __post_init__(self) -> None:
        positive_ints = (
            "users", "items", "natural_rows_per_day", "categories", "brands", "latent_dim",
            "scenarios", "positions", "segments", "natural_candidates", "ad_candidates",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SimConfig.{name} must be a positive integer, got {value!r}")
        for name in ("new_users_per_day", "new_items_per_day"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SimConfig.{name} must be an integer >= 0, got {value!r}")
        if not 0.0 < self.ad_ratio <= 0.1:
            raise ValueError(
                f"SimConfig.ad_ratio must be in (0, 0.1] so natural traffic is >= 10x ad "
                f"traffic, got {self.ad_ratio!r}"
            )
        if self.ad_rows_per_day < 1:
            raise ValueError(
                f"SimConfig.natural_rows_per_day * ad_ratio must give >= 1 ad row per day, got "
                f"natural_rows_per_day={self.natural_rows_per_day}, ad_ratio={self.ad_ratio}"
            )
        for name in ("ad_item_share", "ad_daily_reach"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"SimConfig.{name} must be in (0, 1], got {value!r}")
        for name in ("profile_interest_share", "drift", "hist_noise", "away_rate", "return_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimConfig.{name} must be in [0, 1], got {value!r}")
        if self.segments % 2 or self.segments > 2 * AGE_LEVELS:
            raise ValueError(
                f"SimConfig.segments must be even and <= {2 * AGE_LEVELS} "
                f"(age groups x 2 activity tiers), got {self.segments}"
            )
        non_negative = (
            "brand_zipf", "price_sigma", "item_bias_std", "short_term_noise", "activity_sigma",
            "initial_tenure_days", "engage_rate", "hist_sharpness", "domain_zipf",
            "scenario_weight_std", "domain_weight_std", "scenario_ctr_std", "domain_ctr_std",
            "position_decay", "interaction_scale", "policy_noise",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SimConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("natural_temperature", "ad_temperature", "ad_history_days"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"SimConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("ctr_offset", "ad_ctr_offset"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"SimConfig.{name} must be finite")
        if not 0 <= self.compresslevel <= 9:
            raise ValueError(f"SimConfig.compresslevel must be in 0..9, got {self.compresslevel}")

    @property
    def ad_rows_per_day(self) -> int:
        """Ad impressions per day: floor(natural_rows_per_day * ad_ratio)."""
        return int(math.floor(self.natural_rows_per_day * self.ad_ratio + 1e-9))

    @property
    def domains(self) -> int:
        """Number of possible domains (scenario x position x segment)."""
        return self.scenarios * self.positions * self.segments


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per purpose and day, so streams never shift each other."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=keys))


def _gumbel_argmax(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sample per row of softmax(logits) along the last axis."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)


class World:
    """The simulated population of users, items and domains, advanced one day at a time."""

    def __init__(self, config: SimConfig) -> None:
        self.config = c = config
        rng = _rng(c.seed, 0)
        d = c.latent_dim
        self.day = 0
        # --- item side: categories, brands, latent vectors ---
        self.cat_vec = rng.normal(size=(c.categories, d))
        self.cat_log_price = rng.normal(3.0, 0.8, size=c.categories)
        self.brand_vec = rng.normal(size=(c.brands, d))
        self.brand_cat = rng.integers(0, c.categories, size=c.brands)
        brand_p = 1.0 / np.arange(1, c.brands + 1) ** c.brand_zipf
        self.brand_p = brand_p[rng.permutation(c.brands)] / brand_p.sum()
        # --- user side: profile directions in latent space ---
        self.gender_vec = rng.normal(size=(2, d))
        self.age_vec = rng.normal(size=(AGE_LEVELS, d))
        self.city_vec = rng.normal(size=(CITY_TIERS, d))
        # --- domains: weighting of latent dims, CTR offsets, Zipf sizes ---
        s, p, g = c.scenarios, c.positions, c.segments
        dom = np.arange(c.domains)
        self.dom_scenario = dom // (p * g)
        self.dom_position = (dom // g) % p
        self.dom_segment = dom % g
        scen_w = rng.normal(size=(s, d)) * c.scenario_weight_std
        self.dom_weight = np.exp(
            scen_w[self.dom_scenario] + rng.normal(size=(c.domains, d)) * c.domain_weight_std
        )
        scen_off = rng.normal(size=s) * c.scenario_ctr_std
        self.dom_offset = (
            scen_off[self.dom_scenario]
            + rng.normal(size=c.domains) * c.domain_ctr_std
            - c.position_decay * self.dom_position
        )
        zipf = 1.0 / np.arange(1, c.domains + 1) ** c.domain_zipf
        self.dom_p = np.empty(c.domains)
        self.dom_p[rng.permutation(c.domains)] = zipf / zipf.sum()
        # --- populations ---
        self.n_users = 0
        self.n_items = 0
        self._alloc_users(c.users + c.new_users_per_day * 8)
        self._alloc_items(c.items + c.new_items_per_day * 8)
        tenure = np.floor(rng.exponential(c.initial_tenure_days, size=c.users)).astype(np.int64)
        self._add_users(c.users, rng, birth=-tenure)
        self._add_items(c.items, rng)
        if not self.is_ad[: self.n_items].any():  # tiny pools: keep at least one ad item
            self.is_ad[rng.integers(0, self.n_items)] = True
        # the initial users' history: engagements over their tenure (at most HIST_LEN matter)
        p_eng = 1.0 - np.exp(-c.engage_rate * self.activity[: c.users])
        n_hist = rng.binomial(np.minimum(tenure, 10 * HIST_LEN), p_eng)
        self.hist_len[: c.users] = np.minimum(n_hist, HIST_LEN)
        self.hist[: c.users] = self._sample_categories(self.interest[: c.users], HIST_LEN, rng)
        self._start_day(rng)

    # ----- storage -----
    def _alloc_users(self, cap: int) -> None:
        d = self.config.latent_dim
        old = self.n_users
        new = {
            "gender": np.zeros(cap, np.int64), "age": np.zeros(cap, np.int64),
            "city": np.zeros(cap, np.int64), "segment": np.zeros(cap, np.int64),
            "activity": np.zeros(cap), "birth": np.zeros(cap, np.int64),
            "interest_base": np.zeros((cap, d)), "interest_dev": np.zeros((cap, d)),
            "interest": np.zeros((cap, d)), "hist": np.zeros((cap, HIST_LEN), np.int64),
            "hist_len": np.zeros(cap, np.int64), "away": np.zeros(cap, bool),
        }
        for name, arr in new.items():
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)

    def _alloc_items(self, cap: int) -> None:
        d = self.config.latent_dim
        old = self.n_items
        new = {
            "category": np.zeros(cap, np.int64), "brand": np.zeros(cap, np.int64),
            "price": np.zeros(cap), "item_vec": np.zeros((cap, d)),
            "item_bias": np.zeros(cap), "is_ad": np.zeros(cap, bool),
        }
        for name, arr in new.items():
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)

    def _add_users(self, n: int, rng: np.random.Generator, birth: np.ndarray | int) -> None:
        c = self.config
        lo, hi = self.n_users, self.n_users + n
        if hi > len(self.activity):
            self._alloc_users(max(hi, 2 * len(self.activity)))
        gender = (rng.random(n) >= _FEMALE_SHARE).astype(np.int64)  # 0 = f, 1 = m
        age = rng.choice(AGE_LEVELS, size=n, p=_AGE_PROBS)
        city = rng.choice(CITY_TIERS, size=n, p=_CITY_PROBS)
        activity = rng.lognormal(0.0, c.activity_sigma, size=n)
        age_groups = c.segments // 2
        self.gender[lo:hi], self.age[lo:hi], self.city[lo:hi] = gender, age, city
        self.activity[lo:hi] = activity
        self.segment[lo:hi] = (age * age_groups // AGE_LEVELS) * 2 + (activity > 1.0)
        self.birth[lo:hi] = birth
        prof = (self.gender_vec[gender] + self.age_vec[age] + self.city_vec[city]) / math.sqrt(3)
        a = c.profile_interest_share
        self.interest_base[lo:hi] = a * prof
        self.interest_dev[lo:hi] = math.sqrt(1.0 - a * a) * rng.normal(size=(n, c.latent_dim))
        self.interest[lo:hi] = self.interest_base[lo:hi] + self.interest_dev[lo:hi]
        self.hist_len[lo:hi] = 0
        self.n_users = hi

    def _add_items(self, n: int, rng: np.random.Generator) -> None:
        c = self.config
        lo, hi = self.n_items, self.n_items + n
        if hi > len(self.price):
            self._alloc_items(max(hi, 2 * len(self.price)))
        brand = rng.choice(c.brands, size=n, p=self.brand_p)
        # most items sit in their brand's home category; some brands sell across categories
        cat = np.where(
            rng.random(n) < 0.9, self.brand_cat[brand], rng.integers(0, c.categories, size=n)
        )
        price = np.exp(self.cat_log_price[cat] + rng.normal(size=n) * c.price_sigma)
        self.brand[lo:hi], self.category[lo:hi] = brand, cat
        self.price[lo:hi] = np.maximum(np.round(price, 2), 0.01)
        self.item_vec[lo:hi] = (
            self.cat_vec[cat]
            + 0.5 * self.brand_vec[brand]
            + 0.5 * rng.normal(size=(n, c.latent_dim))
        )
        self.item_bias[lo:hi] = rng.normal(size=n) * c.item_bias_std
        self.is_ad[lo:hi] = rng.random(n) < c.ad_item_share
        self.n_items = hi

    # ----- dynamics -----
    def _sample_categories(self, interest: np.ndarray, k: int, rng) -> np.ndarray:
        """k categories per user, each from softmax(interest . category) or uniform noise."""
        c = self.config
        logits = c.hist_sharpness * (interest @ self.cat_vec.T) / math.sqrt(c.latent_dim)
        out = np.empty((len(interest), k), np.int64)
        for j in range(k):
            out[:, j] = _gumbel_argmax(logits, rng)
        noise = rng.random(out.shape) < c.hist_noise
        out[noise] = rng.integers(0, c.categories, size=int(noise.sum()))
        return out

    def _start_day(self, rng: np.random.Generator) -> None:
        """Today's interest (long-term + short-term noise) and today's ad eligibility."""
        c = self.config
        n = self.n_users
        self.today = self.interest[:n] + c.short_term_noise * rng.normal(size=(n, c.latent_dim))
        tenure = self.day - self.birth[:n]
        weight = 1.0 - np.exp(-(tenure + 1) / c.ad_history_days)
        reach = max(1, int(round(c.ad_daily_reach * n)))
        keys = np.log(weight) + rng.gumbel(size=n)  # weighted sampling without replacement
        self.ad_eligible = np.zeros(n, bool)
        self.ad_eligible[np.argpartition(-keys, reach - 1)[:reach]] = True

    def advance(self) -> None:
        """Move to the next day: engagements, interest drift, arrivals, today's state."""
        c = self.config
        self.day += 1
        rng = _rng(c.seed, 1, self.day)
        n = self.n_users
        # yesterday's background engagements push categories into the users' recent history
        engaged = np.flatnonzero((rng.random(n) < 1.0 - np.exp(-c.engage_rate * self.activity[:n]))
                                 & ~self.away[:n])
        new_cat = self._sample_categories(self.today[engaged], 1, rng)[:, 0]
        self.hist[engaged, 1:] = self.hist[engaged, :-1]
        self.hist[engaged, 0] = new_cat
        self.hist_len[engaged] = np.minimum(self.hist_len[engaged] + 1, HIST_LEN)
        # long-term interest: stationary AR(1) around the profile part
        rho = math.sqrt(1.0 - c.drift**2)
        scale = math.sqrt(1.0 - c.profile_interest_share**2)
        self.interest_dev[:n] = rho * self.interest_dev[:n] + c.drift * scale * rng.normal(
            size=(n, c.latent_dim)
        )
        self.interest[:n] = self.interest_base[:n] + self.interest_dev[:n]
        if c.away_rate > 0:  # its own stream: the other streams do not shift
            draw = _rng(c.seed, 7, self.day).random(n)
            away = self.away[:n]
            self.away[:n] = np.where(away, draw >= c.return_rate, draw < c.away_rate)
        self._add_users(c.new_users_per_day, rng, birth=self.day)
        self._add_items(c.new_items_per_day, rng)
        self._start_day(rng)

    # ----- traffic -----
    def sample(self, source: str, n: int) -> dict[str, np.ndarray]:
        """n impressions of today's traffic from `source` ("natural" or "ad") as arrays.

        Keys: offset (seconds into the day), user, item, domain, click, logit (true click logit).
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        c = self.config
        ad = source == "ad"
        rng = _rng(c.seed, 2 + SOURCES.index(source), self.day)
        nu = self.n_users
        eligible = (self.ad_eligible if ad else np.ones(nu, bool)) & ~self.away[:nu]
        pools, cums = [], []
        for g in range(c.segments):
            pool = np.flatnonzero(eligible & (self.segment[:nu] == g))
            pools.append(pool)
            cums.append(np.cumsum(self.activity[pool]))
        dom_p = self.dom_p * np.array([len(p) > 0 for p in pools])[self.dom_segment]
        dom = rng.choice(c.domains, size=n, p=dom_p / dom_p.sum())
        seg = self.dom_segment[dom]
        users = np.empty(n, np.int64)
        for g in range(c.segments):
            rows = np.flatnonzero(seg == g)
            if rows.size:
                cum = cums[g]
                pick = np.searchsorted(cum, rng.random(rows.size) * cum[-1], side="right")
                users[rows] = pools[g][np.minimum(pick, len(cum) - 1)]
        # serving policy: score k candidates with a noisy relevance estimate, softmax-pick
        item_pool = np.flatnonzero(self.is_ad[: self.n_items]) if ad else np.arange(self.n_items)
        k = c.ad_candidates if ad else c.natural_candidates
        temp = c.ad_temperature if ad else c.natural_temperature
        cand = item_pool[rng.integers(0, len(item_pool), size=(n, k))]
        query = self.today[users] * self.dom_weight[dom]
        affinity = np.einsum("nd,nkd->nk", query, self.item_vec[cand]) / math.sqrt(c.latent_dim)
        true_part = c.interaction_scale * affinity + self.item_bias[cand]
        estimate = true_part + c.policy_noise * rng.normal(size=true_part.shape)
        chosen = _gumbel_argmax(estimate / temp, rng)
        rows = np.arange(n)
        items = cand[rows, chosen]
        logit = (
            c.ctr_offset + (c.ad_ctr_offset if ad else 0.0) + self.dom_offset[dom]
            + true_part[rows, chosen]
        )
        click = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
        offsets = rng.integers(0, _SECONDS_PER_DAY, size=n)
        order = np.argsort(offsets, kind="stable")
        return {
            "offset": offsets[order], "user": users[order], "item": items[order],
            "domain": dom[order], "click": click[order], "logit": logit[order],
        }
