"""Comparing the latency of candidates fairly on a machine that may be busy.

Timing each candidate once, one after another, lets a burst of load that lands on one of them
decide the comparison (``--dilation-mode auto`` once kept ``embed`` over a clearly faster
``aligned`` that way). Here every candidate is timed in each of several rounds, in an order that
changes from round to round, so load hits them all alike; the spread of a candidate's round
medians measures the noise, and candidates whose medians differ by no more than that noise count as
tied: a fixed preference order then decides, so the choice is stable instead of a coin toss.

Only numpy and ``time.perf_counter``; used by :mod:`glimmer.export.cli`.
"""
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

DEFAULT_ROUNDS = 7
MIN_CALLS_PER_ROUND = 3
REL_FLOOR = 0.02  # medians closer than 2% of the fastest are always a tie: below what timing can tell
# The dilation lowerings, most preferred first: aligned is what ONNX Runtime's blocked kernels were
# measured fastest with and has the fewest multiply-adds; embed (a larger, mostly-zero kernel) the most.
DILATION_PREFERENCE = ("aligned", "split", "embed")
SPEED = "speed"
PREFERENCE = "preference within noise"


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
        """A JSON-ready record; ``timed_ms`` (candidate -> median ms) is the key older readers use."""
        return {"timed_ms": dict(self.median_ms), "noise_ms": dict(self.noise_ms),
                "round_medians_ms": {k: list(v) for k, v in self.round_medians_ms.items()},
                "rounds": len(self.orders), "calls_per_round": self.calls_per_round,
                "round_orders": [list(o) for o in self.orders], "tie_floor_relative": self.rel_floor,
                "preference": list(self.preference), "fastest": self.fastest, "tied": list(self.tied),
                "chosen": self.chosen, "decided_by": self.decided_by}


def plan_rounds(total_calls: int, rounds: int = DEFAULT_ROUNDS,
                min_calls: int = MIN_CALLS_PER_ROUND) -> Tuple[int, int]:
    """(rounds, calls per round) spending at most ``total_calls`` timed calls per candidate: up to
    ``rounds`` rounds, fewer when that leaves under ``min_calls`` calls in each (a median of one or
    two calls is itself noise)."""
    if total_calls < 1 or rounds < 1 or min_calls < 1:
        raise ValueError(f"total_calls, rounds and min_calls must be at least 1, got {total_calls}, {rounds}, "
                         f"{min_calls}")
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


def interleave(candidates: Mapping[str, Callable[[], Any]], rounds: int = DEFAULT_ROUNDS,
               calls: int = MIN_CALLS_PER_ROUND, warmup: int = 3,
               clock: Optional[Callable[[], float]] = None) -> Tuple[Dict[str, List[float]], List[List[str]]]:
    """Warm every candidate up, then time it for ``calls`` calls in each of ``rounds`` rounds.

    Returns (candidate -> median ms of its calls in each round, the order of each round). ``clock``
    (seconds) is ``time.perf_counter``, looked up per call so tests can substitute a fake one.
    """
    names = list(candidates)
    if not names:
        raise ValueError("no candidates to time")
    if rounds < 1 or calls < 1 or warmup < 0:
        raise ValueError(f"rounds and calls must be at least 1 and warmup at least 0, got {rounds}, {calls}, "
                         f"{warmup}")
    clock = clock or time.perf_counter
    orders = round_orders(names, rounds)
    for name in orders[0]:
        for _ in range(warmup):
            candidates[name]()
    medians: Dict[str, List[float]] = {name: [] for name in names}
    times = np.empty(calls)
    for order in orders:
        for name in order:
            fn = candidates[name]
            for i in range(calls):
                start = clock()
                fn()
                times[i] = clock() - start
            medians[name].append(float(np.median(times)) * 1e3)
    return medians, orders


def decide(round_medians_ms: Mapping[str, Sequence[float]], preference: Sequence[str],
           rel_floor: float = REL_FLOOR, orders: Optional[List[List[str]]] = None,
           calls_per_round: int = 0) -> Comparison:
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
        return (preference.index(name) if name in preference else len(preference), median[name], name)

    by_speed = sorted(median, key=lambda k: (median[k], rank(k)))
    fastest = by_speed[0]
    floor = rel_floor * median[fastest]
    tied = [k for k in by_speed if median[k] - median[fastest] <= max(noise[fastest], noise[k], floor)]
    chosen = min(tied, key=rank)
    return Comparison(round_medians_ms={k: [float(x) for x in v] for k, v in values.items()}, median_ms=median,
                      noise_ms=noise, orders=orders or [], calls_per_round=calls_per_round, preference=preference,
                      rel_floor=rel_floor, fastest=fastest, tied=tied, chosen=chosen,
                      decided_by=SPEED if len(tied) == 1 else PREFERENCE)


def compare_latency(candidates: Mapping[str, Callable[[], Any]], preference: Sequence[str],
                    rounds: int = DEFAULT_ROUNDS, calls: int = MIN_CALLS_PER_ROUND, warmup: int = 3,
                    rel_floor: float = REL_FLOOR, clock: Optional[Callable[[], float]] = None) -> Comparison:
    """Time zero-argument ``candidates`` interleaved (:func:`interleave`) and choose one (:func:`decide`)."""
    medians, orders = interleave(candidates, rounds, calls, warmup, clock)
    return decide(medians, preference, rel_floor, orders, calls)
