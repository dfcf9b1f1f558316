"""Optuna TPE inside each grid cell (search.method optuna), all cells in one Tune run.

`CellSearcher` is the Tune searcher: it holds one `OptunaSearch` (a TPE study) per cell, hands out the next sample
of the cells in turn until each has drawn its budget, and tells each study the results of its own trials only.
A study starts from its cell's trials in the store (sweeps.cells): their rewards re-seed it, they count toward the
cell's num_samples and are never suggested to run again, so a resumed or enlarged search runs only what is left.

Determinism: each cell's TPESampler is seeded from (search.seed, the cell's config), stably. With max_concurrent: 1
a cell's trials are the same from run to run (given the same results); with more trials at once, a suggestion
depends on which trials have completed by then, so only the first ones (TPE's random start-up trials, 10) repeat.

Only the driver imports this module (it imports Ray and Optuna).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import zlib
from typing import Any

import numpy as np
import optuna
from pydantic import ValidationError
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from hdmap.config import TrialConfig, set_path
from sweeps.cells import CellHistory
from sweeps.spec import Distribution, SearchSpec

MAX_ASKS = 100  # draws in a row that repeat a config the cell ran (or cannot run) before the cell counts as exhausted
RANDOM_AFTER = 10  # TPE's repeats in a row before the next new config is drawn at random

optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created


class CellSearcher(Searcher):
    """One Tune searcher over every cell's study; `launched` collects the trial ids it hands out (the runner's)."""

    def __init__(self, histories: list[CellHistory], search: SearchSpec, retry_failed: bool, launched: set[str]):
        super().__init__(metric=search.column, mode=search.mode)
        self.cells = [CellStudy(history, search, retry_failed, i) for i, history in enumerate(histories)]
        self.turn = 0  # the cell whose turn it is to suggest
        self.running: dict[str, CellStudy] = {}  # Tune's trial id -> the cell that suggested it
        self.launched = launched

    def suggest(self, trial_id: str) -> dict | str:
        """The next cell with samples left suggests the trial (`trial_trainable`'s config); FINISHED when none has."""
        for _ in range(len(self.cells)):
            cell = self.cells[self.turn]
            self.turn = (self.turn + 1) % len(self.cells)
            cfg = cell.suggest(trial_id) if cell.left else None
            if cfg is not None:
                self.running[trial_id] = cell
                self.launched.add(cfg.trial_id)
                return {"trial": cfg.model_dump(mode="json")}
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell = self.running.pop(trial_id, None)
        if cell is not None:
            cell.tell(trial_id, (result or {}).get(self.metric))

    def save(self, checkpoint_path: str) -> None:
        """Nothing: a sweep resumes from its store (sweeps.cells), never from Tune's experiment state."""


class CellStudy:
    """One cell's TPE study, started from the cell's trials in the store."""

    def __init__(self, history: CellHistory, search: SearchSpec, retry_failed: bool, index: int = 0) -> None:
        cell = self.cell = history.cell
        self.index, self.seed = index, cell_seed(search.seed, cell.key)
        self.space = {path: _distribution(dist, cell.choices.get(path)) for path, dist in cell.space.items()}
        done = history.done(retry_failed)
        retried = [t for t in history.trials if t not in done]  # --retry-failed: the failed configs run first
        self.study = OptunaSearch(
            space=self.space,
            metric=search.column,
            mode=search.mode,
            points_to_evaluate=[self._encode(t.values) for t in retried],
            sampler=optuna.samplers.TPESampler(seed=self.seed, constant_liar=True),
        )
        for t in done:  # re-seeded: a failed trial is a sample without a reward
            self.study.add_evaluated_point(self._encode(t.values), t.reward, error=_missing(t.reward))
        self.left = history.left(retry_failed)
        self.known = {t.trial_id for t in done}  # configs not to run (again): stored, or launched by this run
        self.rewards = {t.trial_id: None if _missing(t.reward) else t.reward for t in done}  # a repeat's answer
        self.asked: dict[str, tuple] = {}  # Tune's trial id -> (the study's trial, the config's id, random params)

    def suggest(self, trial_id: str) -> TrialConfig | None:
        """The study's next config that is not known yet. A repeat is answered at once with the reward the study
        already had for it (none for a config still running or one that does not validate); once TPE keeps repeating
        itself (a small discrete space it has converged in, RANDOM_AFTER repeats in a row), the next new config is
        drawn at random from the space, as a random search would. None after MAX_ASKS draws without a new config:
        the cell stops short of its budget."""
        for attempt in range(MAX_ASKS):
            asked = f"{trial_id}-{attempt}"
            if attempt < RANDOM_AFTER:
                params = self.study.suggest(asked)
            else:
                params = self._random_params(asked)
            cfg = self._config(params)
            if cfg is not None and cfg.trial_id not in self.known:
                self.known.add(cfg.trial_id)
                self.asked[trial_id] = (asked, cfg.trial_id, None if attempt < RANDOM_AFTER else params)
                self.left -= 1
                return cfg
            if attempt < RANDOM_AFTER:
                reward = None if cfg is None else self.rewards.get(cfg.trial_id)
                self._complete(asked, None, reward)
        logging.getLogger("ray").warning(
            "search cell %d: no new config in %d draws (its space is nearly run through); it stops here",
            self.index,
            MAX_ASKS,
        )
        self.left = 0
        return None

    def tell(self, trial_id: str, reward: Any) -> None:
        """A trial's end: its reward (the objective from its final report), none for a failure."""
        asked, cfg_id, params = self.asked.pop(trial_id)
        self.rewards[cfg_id] = None if _missing(reward) else float(reward)
        self._complete(asked, params, self.rewards[cfg_id])

    def _complete(self, asked: str, params: dict | None, reward: float | None) -> None:
        """Tell the study a result: of its own suggestion `asked`, or of a random draw's `params` (added)."""
        if params is not None:
            self.study.add_evaluated_point(params, reward, error=reward is None)
        elif reward is None:
            self.study.on_trial_complete(asked, None, error=True)
        else:
            self.study.on_trial_complete(asked, {self.study.metric: reward})

    def _random_params(self, asked: str) -> dict[str, Any]:
        """A uniform draw of the study's parameters (a choice by its index), seeded by the cell and the draw."""
        rng = np.random.default_rng([self.seed, zlib.crc32(asked.encode())])
        return {
            path: int(rng.integers(len(self.cell.choices[path]))) if path in self.cell.choices else dist.sample(rng)
            for path, dist in sorted(self.cell.space.items())
        }

    def _config(self, params: dict[str, Any]) -> TrialConfig | None:
        """The cell's config with the drawn values (a choice is drawn by its index), settled by the model as a random
        sample is; None: it does not validate."""
        tree = copy.deepcopy(self.cell.tree)
        tree["runtime"] = self.cell.config.runtime.model_dump(mode="json")  # the data fingerprint of the plan's check
        for path, value in params.items():
            choices = self.cell.choices.get(path)
            set_path(tree, path, copy.deepcopy(choices[value]) if choices is not None else value)
        try:
            return TrialConfig.model_validate(tree)
        except ValidationError:
            return None

    def _encode(self, values: dict[str, Any]) -> dict[str, Any]:
        """A stored trial's searched values as the study's parameters (a choice by its index)."""
        params = {}
        for path, value in values.items():
            choices = self.cell.choices.get(path)
            if choices is not None:
                params[path] = choices.index(value)
            else:
                params[path] = (
                    int(value) if isinstance(self.space[path], optuna.distributions.IntDistribution) else value
                )
        return params


def _distribution(dist: Distribution, choices: list | None) -> optuna.distributions.BaseDistribution:
    """The spec's distribution as Optuna's: a choice by index (Optuna's choices must be scalars)."""
    if choices is not None:
        return optuna.distributions.CategoricalDistribution(list(range(len(choices))))
    if dist.randint is not None:
        return optuna.distributions.IntDistribution(*dist.randint)
    low, high = dist.uniform or dist.loguniform
    return optuna.distributions.FloatDistribution(low, high, log=dist.loguniform is not None)


def cell_seed(seed: int, cell_key: str) -> int:
    """The cell's TPE seed: from search.seed and the cell's config, the same in every process (not `hash()`)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\n{cell_key}".encode()).digest()[:4], "big")


def _missing(reward: Any) -> bool:
    return reward is None or not math.isfinite(reward)
