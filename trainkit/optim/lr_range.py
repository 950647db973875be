"""Reading an LR range test (Smith 2017): Lightning's smoothed losses unbiased, and the two
suggestions trainkit makes from a loss-vs-lr curve (``trainkit lr-find``, ``trainkit doctor``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from trainkit.errors import ConfigError

SKIP_BEGIN = 10  # as Lightning's suggestion(): the first points say little about the curve
BETA = 0.98  # Lightning's loss smoothing


def unbiased(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """Lightning's smoothed sweep losses with the EMA bias correction of step ``n`` (0-based).

    Lightning 2.6 divides the EMA after ``n + 1`` updates by ``1 - beta ** (n + 2)`` (it reads
    the step counter after the optimizer step), which halves the first points and makes the
    curve rise during its first ~50 steps; the loss minimum would then sit at the start.

    >>> [round(v, 6) for v in unbiased([0.02 * 3 / (1 - 0.98**2)])]
    [3.0]
    """
    return [v * (1 - beta ** (n + 2)) / (1 - beta ** (n + 1)) for n, v in enumerate(losses)]


def suggestions(lrs: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """The lr of steepest loss descent, and the lr of the lowest loss / 10.

    Both leave out the first ``SKIP_BEGIN`` points and the last one, as Lightning's suggestion.

    >>> lrs = [10 ** (i / 4 - 5) for i in range(16)]
    >>> s = suggestions(lrs, [2.0] * 10 + [2.0, 1.9, 1.0, 0.9, 0.8, 5.0])
    >>> round(s["steepest"], 6), round(s["min10"], 6)
    (0.005623, 0.003162)
    """
    lr = np.asarray(lrs[SKIP_BEGIN:-1], dtype=float)
    loss = np.asarray(losses[SKIP_BEGIN:-1], dtype=float)
    keep = np.isfinite(loss)
    lr, loss = lr[keep], loss[keep]
    if len(loss) < 3:
        raise ConfigError(f"only {len(loss)} usable points in the sweep (losses NaN or diverging early): lower --min-lr or raise --steps", "--min-lr")
    # per point of an exponential sweep, i.e. per equal step of log(lr)
    steepest = lr[int(np.argmin(np.gradient(loss)))]
    return {"steepest": float(steepest), "min10": float(lr[int(np.argmin(loss))] / 10)}
