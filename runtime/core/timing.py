"""Timing a call: warm-up, timed calls, robust statistics; and a fair comparison of candidates.

Every latency figure in glimmer comes from here, so they all mean the same thing:
``time.perf_counter`` around each call, untimed warm-up calls first (first calls allocate and tune),
and statistics in trtexec's vocabulary (min / max / mean / median / p90 / p95 / p99 ms), medians and
percentiles because a single slow call on a busy machine must not move the figure.

Timing each candidate once, one after another, lets a burst of load that lands on one of them decide
a comparison (``--dilation-mode auto`` once kept ``embed`` over a clearly faster ``aligned`` that
way). :func:`compare_latency` times every candidate in each of several rounds, in an order that
changes from round to round, so load hits them all alike; the spread of a candidate's round medians
measures the noise, and candidates whose medians differ by no more than that noise count as tied: a
fixed preference order then decides, so the choice is stable instead of a coin toss.

Only numpy and the standard library: this ships to the drone.
"""

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: the percentiles every latency summary reports, as trtexec does (50 is the median)
PERCENTILES = (50, 90, 95, 99)
DEFAULT_ROUNDS = 7
MIN_CALLS_PER_ROUND = 3
REL_FLOOR = (
    0.02  # medians closer than 2% of the fastest are always a tie: below what timing can tell
)
SPEED = "speed"
PREFERENCE = "preference within noise"

Clock = Callable[[], float]


def sample_ms(
    fn: Callable[[], Any],
    iters: int,
    warmup: int = 0,
    clock: Optional[Clock] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> List[float]:
    """Milliseconds of each of ``iters`` calls of ``fn()``, after ``warmup`` untimed calls.

    ``clock`` (seconds) is ``time.perf_counter``, looked up per call so tests can substitute a fake
    one; ``progress(done)`` runs after each timed call, outside the timed window.
    """
    if iters < 0 or warmup < 0:
        raise ValueError(f"iters and warmup must be at least 0, got {iters}, {warmup}")
    clock = clock or time.perf_counter
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for i in range(iters):
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
        if progress is not None:
            progress(i + 1)
    return times


def latency_stats(samples_ms: Sequence[float], digits: Optional[int] = 3) -> Dict[str, Any]:
    """count, min, max, mean, median, p90, p95, p99 of ``samples_ms`` (``*_ms`` keys, trtexec's
    vocabulary), rounded to ``digits`` (None: unrounded); ``{"count": 0}`` for no samples."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    out: Dict[str, Any] = {
        "count": int(values.size),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES)):
        out["median_ms" if p == 50 else f"p{p}_ms"] = float(v)
    if digits is None:
        return out
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in out.items()}


def median_ms(fn: Callable[[], Any], iters: int, warmup: int = 0) -> float:
    """The median ms of ``iters`` calls of ``fn()`` after ``warmup`` untimed ones."""
    return float(np.median(sample_ms(fn, iters, warmup)))


# -- comparing candidates ---------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_latency` measured and decided (times in milliseconds)."""

    round_medians_ms: Dict[str, List[float]]  # per candidate: the median of its calls in each round
    median_ms: Dict[str, float]  # per candidate: the median of its round medians
    noise_ms: Dict[str, float]  # per candidate: median absolute deviation of its round medians
    orders: List[List[str]]  # the order the candidates ran in, per round
    calls_per_round: int
    preference: Tuple[str, ...]
    rel_floor: float
    fastest: str  # lowest median
    tied: List[str]  # candidates within noise of the fastest (the fastest included), fastest first
    chosen: str
    decided_by: str  # SPEED or PREFERENCE

    def report(self) -> Dict[str, Any]:
        """A JSON-ready record; ``timed_ms`` (candidate -> median ms) is the key older readers
        use."""
        return {
            "timed_ms": dict(self.median_ms),
            "noise_ms": dict(self.noise_ms),
            "round_medians_ms": {k: list(v) for k, v in self.round_medians_ms.items()},
            "rounds": len(self.orders),
            "calls_per_round": self.calls_per_round,
            "round_orders": [list(o) for o in self.orders],
            "tie_floor_relative": self.rel_floor,
            "preference": list(self.preference),
            "fastest": self.fastest,
            "tied": list(self.tied),
            "chosen": self.chosen,
            "decided_by": self.decided_by,
        }


def plan_rounds(
    total_calls: int, rounds: int = DEFAULT_ROUNDS, min_calls: int = MIN_CALLS_PER_ROUND
) -> Tuple[int, int]:
    """(rounds, calls per round) spending at most ``total_calls`` timed calls per candidate: up to
    ``rounds`` rounds, fewer when that leaves under ``min_calls`` calls in each (a median of one or
    two calls is itself noise)."""
    if total_calls < 1 or rounds < 1 or min_calls < 1:
        raise ValueError(
            f"total_calls, rounds and min_calls must be at least 1, got {total_calls}, {rounds}, "
            f"{min_calls}"
        )
    n = max(1, min(rounds, total_calls // min_calls))
    return n, total_calls // n


def round_orders(names: Sequence[str], rounds: int) -> List[List[str]]:
    """Deterministic run order per round: rotations of ``names``, then the same rotations reversed.

    Over ``2 * len(names)`` rounds every candidate runs first equally often and directly after each
    other candidate equally often, so no candidate always inherits the same one's cache or heat.
    """
    n = len(names)
    orders = []
    for r in range(rounds):
        k = r % n
        order = list(names[k:]) + list(names[:k])
        if (r // n) % 2:
            order.reverse()
        orders.append(order)
    return orders


def interleave(
    candidates: Mapping[str, Callable[[], Any]],
    rounds: int = DEFAULT_ROUNDS,
    calls: int = MIN_CALLS_PER_ROUND,
    warmup: int = 3,
    clock: Optional[Clock] = None,
) -> Tuple[Dict[str, List[float]], List[List[str]]]:
    """Warm every candidate up, then time it for ``calls`` calls in each of ``rounds`` rounds.

    Returns (candidate -> median ms of its calls in each round, the order of each round).
    """
    names = list(candidates)
    if not names:
        raise ValueError("no candidates to time")
    if rounds < 1 or calls < 1 or warmup < 0:
        raise ValueError(
            f"rounds and calls must be at least 1 and warmup at least 0, got {rounds}, {calls}, "
            f"{warmup}"
        )
    orders = round_orders(names, rounds)
    for name in orders[0]:
        sample_ms(candidates[name], 0, warmup)
    medians: Dict[str, List[float]] = {name: [] for name in names}
    for order in orders:
        for name in order:
            medians[name].append(float(np.median(sample_ms(candidates[name], calls, clock=clock))))
    return medians, orders


def decide(
    round_medians_ms: Mapping[str, Sequence[float]],
    preference: Sequence[str],
    rel_floor: float = REL_FLOOR,
    orders: Optional[List[List[str]]] = None,
    calls_per_round: int = 0,
) -> Comparison:
    """Choose among measured candidates.

    The fastest is the lowest median of round medians. Another candidate is tied with it when the
    medians differ by at most the larger noise (median absolute deviation of round medians) of the
    two, and never less than ``rel_floor`` of the fastest median. With no tie the fastest wins on
    speed; otherwise the tied candidate earliest in ``preference`` wins (candidates not named there
    come after, fastest first), so noise cannot flip the choice between runs.
    """
    if not round_medians_ms:
        raise ValueError("no candidates to decide between")
    if rel_floor < 0:
        raise ValueError(f"rel_floor must be at least 0, got {rel_floor}")
    for name, values in round_medians_ms.items():
        if len(values) == 0:
            raise ValueError(f"candidate {name!r} has no round medians")
    preference = tuple(preference)
    values = {k: np.asarray(v, dtype=np.float64) for k, v in round_medians_ms.items()}
    median = {k: float(np.median(v)) for k, v in values.items()}
    noise = {k: float(np.median(np.abs(v - median[k]))) for k, v in values.items()}

    def rank(name: str) -> Tuple[int, float, str]:
        return (
            preference.index(name) if name in preference else len(preference),
            median[name],
            name,
        )

    by_speed = sorted(median, key=lambda k: (median[k], rank(k)))
    fastest = by_speed[0]
    floor = rel_floor * median[fastest]
    tied = [
        k for k in by_speed if median[k] - median[fastest] <= max(noise[fastest], noise[k], floor)
    ]
    chosen = min(tied, key=rank)
    return Comparison(
        round_medians_ms={k: [float(x) for x in v] for k, v in values.items()},
        median_ms=median,
        noise_ms=noise,
        orders=orders or [],
        calls_per_round=calls_per_round,
        preference=preference,
        rel_floor=rel_floor,
        fastest=fastest,
        tied=tied,
        chosen=chosen,
        decided_by=SPEED if len(tied) == 1 else PREFERENCE,
    )


def compare_latency(
    candidates: Mapping[str, Callable[[], Any]],
    preference: Sequence[str],
    rounds: int = DEFAULT_ROUNDS,
    calls: int = MIN_CALLS_PER_ROUND,
    warmup: int = 3,
    rel_floor: float = REL_FLOOR,
    clock: Optional[Clock] = None,
) -> Comparison:
    """Time zero-argument ``candidates`` interleaved (:func:`interleave`) and choose one
    (:func:`decide`)."""
    medians, orders = interleave(candidates, rounds, calls, warmup, clock)
    return decide(medians, preference, rel_floor, orders, calls)
