"""Several training corpora in one epoch: each corpus's share of the drawn pairs.

data.train may list corpora (an in-domain set, a large general one, tagged back-translations).
Their kept pairs lie one corpus after another in one table (pairs.prepare_train); this module
decides which rows each epoch draws from each, and hands out row numbers as upsample.py does.

How an epoch is drawn. Corpus i, with weight w_i and R_i rows per epoch (its kept pairs, repeated
as data.upsample_* says: upsampling weighs pairs within a corpus, the weight weighs the corpora),
gets the share w_i / sum(w) of an epoch of E = sum(R_i) rows: m_i rows, rounded so they sum to E.
The m_i rows are drawn *without replacement* as far as the corpus reaches: all of its rows
m_i // R_i times, then a random m_i mod R_i of them, chosen afresh each epoch from (seed, epoch,
corpus). So a down-weighted corpus shows a different part of itself every epoch, an up-weighted
one repeats each pair as evenly as it can, and a resumed run draws exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtkit.config import CorpusConfig


@dataclass(frozen=True)
class CorpusSlice:
    """Where one corpus's kept pairs lie in the training table: rows start .. start + kept - 1."""

    name: str
    weight: float
    start: int
    kept: int


def corpus_names(corpora: Sequence[CorpusConfig]) -> list[str]:
    """How logs name each corpus: its `name`, else its tag, file name or dataset name (made unique)."""
    names = []
    for i, c in enumerate(corpora):
        name = c.name or c.tag or _source_name(c) or f"train[{i}]"
        names.append(name if name not in names else f"{name}#{i}")
    return names


def _source_name(c: CorpusConfig) -> str | None:
    if c.src:
        return Path(c.src).name
    if c.path:
        return Path(c.path).name
    return c.hub


def epoch_draws(rows_per_corpus: Sequence[int], weights: Sequence[float]) -> list[int]:
    """m_i: the rows of an epoch of sum(rows_per_corpus) that corpus i gives, in proportion to its
    weight (largest remainders get the rounding, so they add up exactly)."""
    total = int(sum(rows_per_corpus))
    share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    exact = share * total
    draws = np.floor(exact).astype(np.int64)
    short = total - int(draws.sum())
    draws[np.argsort(-(exact - draws), kind="stable")[:short]] += 1
    return [int(d) for d in draws]


class CorpusMix:
    """The training rows of each epoch, drawn from several corpora by weight (module docstring).

    Args:
        slices: every corpus's place in the training table, in data.train order.
        corpus_rows: per corpus, its rows of each epoch as upsample_epochs gives them (indices
            local to the corpus; epoch e takes entry min(e, last)), or None for each pair once.
        seed: the run's seed (with the epoch and the corpus number, it picks the partial draws).
    """

    def __init__(self, slices: Sequence[CorpusSlice], corpus_rows: Sequence[Sequence[np.ndarray] | None],
                 seed: int) -> None:
        self.slices, self.seed = list(slices), int(seed)
        self._rows = [[np.arange(s.kept, dtype=np.int64)] if r is None else [np.asarray(x, np.int64) for x in r]
                      for s, r in zip(self.slices, corpus_rows, strict=True)]
        self._epochs = max(len(r) for r in self._rows)  # later epochs repeat the last

    def draws(self, epoch: int) -> list[int]:
        """Rows each corpus gives in `epoch`."""
        per_corpus = [len(r[min(epoch, len(r) - 1)]) for r in self._rows]
        return epoch_draws(per_corpus, [s.weight for s in self.slices])

    def counts(self, epoch: int) -> dict[str, int]:
        """{corpus name: rows it gives in `epoch`} (the training log and metrics.jsonl report it)."""
        return {s.name: m for s, m in zip(self.slices, self.draws(epoch), strict=True)}

    def __call__(self, epoch: int) -> np.ndarray:
        """The table rows of `epoch` (repeats allowed; batching sorts and shuffles them)."""
        parts = []
        for i, (s, rows, m) in enumerate(zip(self.slices, self._rows, self.draws(epoch), strict=True)):
            own = rows[min(epoch, len(rows) - 1)]
            whole, part = divmod(m, len(own))
            rng = np.random.default_rng([self.seed, epoch, i])
            some = np.sort(rng.choice(len(own), size=part, replace=False))  # without replacement
            parts.append(np.concatenate([own] * whole + [own[some]]) + s.start)
        return np.concatenate(parts)
