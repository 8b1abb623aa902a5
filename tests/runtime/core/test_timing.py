"""glimmer.runtime.core.timing: warm-up and timed calls, trtexec-style statistics, and candidates
timed in interleaved rounds whose ties within noise go to a preference.

The timed candidates are fakes that sleep known amounts (or advance a fake clock, where the test is
about the rule rather than the timing), so the whole file runs in well under 3 s.
"""

import contextlib
import importlib.util
import itertools
import time
from collections import Counter

import fake_tensorrt as fake
import numpy as np
import pytest

from glimmer.runtime.core.timing import (
    PREFERENCE,
    SPEED,
    compare_latency,
    decide,
    interleave,
    latency_stats,
    median_ms,
    plan_rounds,
    round_orders,
    sample_ms,
)

# The export layer's preference order: glimmer.export imports torch, absent from the runtime-only
# Python 3.8 suite, where the tests that use it skip.
HAS_TORCH = importlib.util.find_spec("torch") is not None
if HAS_TORCH:
    from glimmer.export.rewrites.dilation import DILATION_PREFERENCE
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="DILATION_PREFERENCE lives in glimmer.export (torch)"
)


def sleeper(ms):
    return lambda: time.sleep(ms / 1e3)


def test_sample_ms_warms_up_untimed_then_times_each_call():
    candidates, clock = fake_clock_candidates({"a": [5.0, 1.0, 2.0, 3.0]})
    calls, done = [], []
    fn = candidates["a"]
    times = sample_ms(
        lambda: calls.append(1) or fn(), 3, warmup=1, clock=clock, progress=done.append
    )
    assert len(calls) == 4 and done == [1, 2, 3]
    assert times == pytest.approx([1.0, 2.0, 3.0])  # the 5 ms warm-up call is not among them
    assert sample_ms(lambda: None, 0) == []
    assert median_ms(sleeper(1.0), 3) >= 1.0
    with pytest.raises(ValueError):
        sample_ms(lambda: None, -1)


def test_latency_stats_speak_trtexecs_vocabulary():
    stats = latency_stats([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats == {
        "count": 5,
        "mean_ms": 22.0,
        "min_ms": 1.0,
        "max_ms": 100.0,
        "median_ms": 3.0,
        "p90_ms": 61.6,
        "p95_ms": 80.8,
        "p99_ms": 96.16,
    }
    assert (
        latency_stats([1 / 3])["median_ms"] == 0.333
        and latency_stats([1 / 3], digits=None)["p99_ms"] == 1 / 3
    )
    assert latency_stats([]) == {"count": 0}


def test_clearly_faster_candidate_wins_by_speed_over_the_preferred_one():
    result = compare_latency(
        {"slow": sleeper(6.0), "fast": sleeper(1.0)},
        preference=("slow", "fast"),
        rounds=5,
        calls=3,
        warmup=1,
    )
    assert (
        result.chosen == result.fastest == "fast"
        and result.tied == ["fast"]
        and result.decided_by == SPEED
    )
    assert result.median_ms["slow"] > result.median_ms["fast"] >= 1.0
    assert (
        all(len(v) == 5 for v in result.round_medians_ms.values()) and result.calls_per_round == 3
    )
    report = result.report()
    assert report["timed_ms"] == result.median_ms and report["decided_by"] == "speed"
    assert report["round_medians_ms"] == result.round_medians_ms and report["rounds"] == 5
    assert set(report) >= {"noise_ms", "preference", "chosen", "fastest", "tied", "round_orders"}


@pytest.mark.parametrize("preference", [("a", "b"), ("b", "a")])
def test_within_noise_the_preferred_candidate_wins_every_time(preference):
    """``b`` is nominally 2% slower: inside the (generous) floor, so the preference decides,
    always."""
    candidates = {"a": sleeper(2.0), "b": sleeper(2.04)}
    for _ in range(3):
        result = compare_latency(
            candidates, preference, rounds=3, calls=3, warmup=1, rel_floor=0.25
        )
        assert result.chosen == preference[0] and result.decided_by == PREFERENCE
        assert sorted(result.tied) == ["a", "b"]


def fake_clock_candidates(times_ms):
    """Candidates that advance a fake clock by the next of their given times (ms), cycling."""
    now = [0.0]
    cycles = {name: itertools.cycle(values) for name, values in times_ms.items()}

    def make(name):
        return lambda: now.__setitem__(0, now[0] + next(cycles[name]) / 1e3)

    return {name: make(name) for name in times_ms}, lambda: now[0]


@needs_torch
def test_measured_noise_widens_the_tie_and_a_quiet_gap_does_not():
    # embed is nominally 8% faster than aligned, but its round medians swing by +-15%: a tie.
    noisy = {"embed": [0.85, 1.15, 1.0], "aligned": [1.08, 1.08, 1.08]}
    candidates, clock = fake_clock_candidates(noisy)
    result = compare_latency(
        candidates, DILATION_PREFERENCE, rounds=3, calls=1, warmup=0, clock=clock
    )
    assert (
        result.fastest == "embed" and result.chosen == "aligned" and result.decided_by == PREFERENCE
    )
    assert result.noise_ms["embed"] == pytest.approx(0.15) and result.noise_ms[
        "aligned"
    ] == pytest.approx(0.0)
    # the same 8% gap measured without noise is a real difference: speed decides.
    quiet = decide({"embed": [1.0] * 3, "aligned": [1.08] * 3}, DILATION_PREFERENCE)
    assert quiet.chosen == "embed" and quiet.decided_by == SPEED
    # under the 2% floor even a noiseless difference is a tie.
    floor = decide(
        {"embed": [1.0] * 3, "aligned": [1.015] * 3, "split": [1.5] * 3}, DILATION_PREFERENCE
    )
    assert (
        floor.chosen == "aligned"
        and floor.tied == ["embed", "aligned"]
        and floor.decided_by == PREFERENCE
    )


def test_decision_is_deterministic_and_unlisted_candidates_rank_last():
    medians = {"x": [1.0, 1.01], "aligned": [1.005, 1.0], "split": [1.3, 1.3]}
    results = [decide(medians, ("aligned", "split")) for _ in range(5)]
    assert {(r.chosen, r.decided_by, tuple(r.tied)) for r in results} == {
        ("aligned", PREFERENCE, ("aligned", "x"))
    }
    assert (
        decide({"x": [1.0], "y": [1.001]}, ()).chosen == "x"
    )  # no preference: the faster of the tie


def test_rounds_rotate_the_order_and_balance_who_runs_after_whom():
    calls = []
    candidates = {name: (lambda n=name: calls.append(n)) for name in ("split", "aligned", "embed")}
    medians, orders = interleave(candidates, rounds=6, calls=1, warmup=0)
    assert calls == [name for order in orders for name in order]
    assert orders == round_orders(list(candidates), 6)
    assert Counter(order[0] for order in orders) == dict.fromkeys(candidates, 2)
    follows = Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    assert follows == {pair: 2 for pair in itertools.permutations(candidates, 2)}
    assert all(len(v) == 6 for v in medians.values())
    # warm-up calls come first, then every round times each candidate ``calls`` times
    calls.clear()
    interleave(candidates, rounds=2, calls=3, warmup=2)
    assert (
        calls
        == ["split"] * 2
        + ["aligned"] * 2
        + ["embed"] * 2
        + ["split"] * 3
        + ["aligned"] * 3
        + ["embed"] * 3
        + ["aligned"] * 3
        + ["embed"] * 3
        + ["split"] * 3
    )


def test_plan_rounds_splits_the_latency_runs():
    assert plan_rounds(100) == (7, 14)
    assert plan_rounds(20) == (6, 3)
    assert plan_rounds(3) == (1, 3) and plan_rounds(1) == (1, 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: compare_latency({}, ("a",)),
        lambda: interleave({"a": lambda: None}, rounds=0),
        lambda: interleave({"a": lambda: None}, calls=0),
        lambda: interleave({"a": lambda: None}, warmup=-1),
        lambda: decide({}, ("a",)),
        lambda: decide({"a": []}, ("a",)),
        lambda: decide({"a": [1.0]}, ("a",), rel_floor=-0.1),
        lambda: plan_rounds(0),
        lambda: plan_rounds(10, rounds=0),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


@needs_torch
def test_tensorrt_runners_are_held_open_together_and_interleaved(tmp_path, monkeypatch, fake_cuda):
    """engines.tensorrt_runner against the FAKE tensorrt module: an engine per candidate, all open
    at once, each call one inference of the given batch. Nothing here ran real TensorRT."""
    from glimmer.runtime.backends.trt.engines import tensorrt_runner

    fake.install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    paths = {mode: fake.write_tiny_onnx(tmp_path / f"{mode}.onnx") for mode in ("split", "aligned")}
    with contextlib.ExitStack() as stack:
        runners = {
            mode: stack.enter_context(tensorrt_runner(path, "fp16", fake.tiny_meta(), x, tmp_path))
            for mode, path in paths.items()
        }
        for run in runners.values():
            (y,) = run()
            np.testing.assert_allclose(y, fake.reference_output(x, (1, 4)), rtol=1e-6)
        result = compare_latency(
            runners, DILATION_PREFERENCE, rounds=2, calls=3, warmup=1, rel_floor=10.0
        )
    assert result.chosen == "aligned" and result.decided_by == PREFERENCE
    assert sorted(p.name for p in tmp_path.glob("*.engine")) == [
        "aligned.fp16.engine",
        "split.fp16.engine",
    ]
    assert fake_cuda.allocs == {} and fake_cuda.streams == {}
