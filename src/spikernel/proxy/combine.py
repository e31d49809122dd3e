"""Rankings over a set of candidates: a vote of several proxies, and a proxy ranked among equals in size.

Both take rows ``{name: value, ...}`` (one per candidate, e.g. ``compute_proxies``'s dicts with a
footprint added) and return one number per row, higher = better. A proxy that could not score a
candidate (NaN) ranks it last, with -inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from spikernel.errors import ConfigError

DEFAULT_SIZE_BINS = 5


def ranks(values: Sequence[float]) -> np.ndarray:
    """1 (worst) .. n (best), ties sharing their mean rank; NaN counts as -inf (last)."""
    first, last, inverse = _tie_runs(values)
    return ((first + last) / 2)[inverse]


def _tie_runs(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct value, its first and last 1-based position in sorted order; each value's run."""
    v = np.asarray(values, dtype=float).ravel()
    _, inverse, counts = np.unique(np.where(np.isnan(v), -np.inf, v), return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(float)
    return last - counts + 1, last, inverse


def _column(rows: Sequence[dict], name: str) -> np.ndarray:
    try:
        return np.array([float(row[name]) for row in rows])
    except KeyError:
        raise ConfigError(f"a candidate has no value for {name!r}") from None


def rank_vote(rows: Sequence[dict], names: Sequence[str]) -> list[float]:
    """Mean rank of each candidate over the proxies ``names`` (1 = last everywhere, n = first).

    Abdelfattah et al. (ICLR 2021) let three proxies vote on each pair of candidates; the mean
    of their ranks is the ranking counterpart, and weighs every proxy alike whatever its scale.
    """
    if not names:
        raise ConfigError("a vote needs at least one proxy")
    if not rows:
        return []
    return list(np.mean([ranks(_column(rows, n)) for n in names], axis=0))


def size_bins(sizes: Sequence[float], bins: int | None = DEFAULT_SIZE_BINS) -> np.ndarray:
    """A bin index (0 = smallest) per candidate: quantile bins of size, equal sizes always together.

    Sorted by size, candidate i sits at position ``c_i`` (0 .. n), the middle of its run of equal
    sizes (``(#smaller + #smaller-or-equal) / 2``), and goes to bin ``floor(bins * c_i / n)``: each
    bin holds about n / bins candidates, and a run of equal sizes that straddles a quantile
    lands, whole, in the bin that holds most of it (a bin may then stay empty).
    ``bins=None``: one bin per distinct size (exactly equal footprints).
    """
    s = np.asarray(sizes, dtype=float)
    if bins is None:
        return np.unique(s, return_inverse=True)[1]
    if bins < 1:
        raise ConfigError(f"the number of size bins must be at least 1, got {bins}")
    first, last, inverse = _tie_runs(s)
    centre = ((first - 1 + last) / 2)[inverse]
    return np.minimum(bins - 1, np.floor(bins * centre / max(len(s), 1))).astype(int)


def rank_within_size(rows: Sequence[dict], name: str, size: str = "footprint_bytes",
                     bins: int | None = DEFAULT_SIZE_BINS) -> list[float]:
    """The proxy ``name``'s rank among candidates of the same size bin, scaled to 0 (last) .. 1 (first).

    Bins are ``size_bins`` of the rows' ``size`` values (quantiles of this very candidate set);
    a candidate alone in its bin gets 0.5. The proxy then only speaks to what size does not say.
    """
    values, groups = _column(rows, name), size_bins(_column(rows, size), bins)
    out = np.full(len(rows), math.nan)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        r = ranks(values[members])
        out[members] = 0.5 if len(members) == 1 else (r - 1) / (len(members) - 1)
    return list(out)


def size_first(rows: Sequence[dict], name: str, size: str = "footprint_bytes",
               bins: int | None = DEFAULT_SIZE_BINS) -> list[float]:
    """Size bin first, then the proxy within it: the proxy's choice among the largest candidates.

    ``bin + rank_within_size``; for a search whose candidates all fit its budget, the top pick
    is the best-by-proxy of the biggest fifth (with 5 bins).
    """
    groups = size_bins(_column(rows, size), bins)
    return list(groups + np.asarray(rank_within_size(rows, name, size, bins)) * 0.999)
