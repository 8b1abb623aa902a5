"""Which compressed model ships, the reason the summary gives, and what the timing can tell apart.

Timings here are made-up round medians given to the project's decision rule, not measured."""

import pytest

from glimmer.runtime.core.timing import decide
from glimmer.train.compress.selection import PREFERENCE, choose, latency_notes

SPARSE = {"stage": "sparse", "params": 3_000_000, "gflops": 8.2, "map50_95": 0.400}


def _rows(pruned=0.0, finetune=0.269, distill=0.245):
    rows = [SPARSE]
    for stage, m in (("pruned", pruned), ("finetune", finetune), ("distill", distill)):
        rows.append({"stage": stage, "params": 900_000, "gflops": 2.9, "map50_95": m})
    return rows


def _timing(**medians):
    """Round medians per stage: ``stage=(centre, jitter)``, seven rounds each."""
    jitter = (0.0, 1.0, -1.0, 0.5, -0.5, 0.2, -0.2)
    rounds = {s: [c + j * spread for j in jitter] for s, (c, spread) in medians.items()}
    return decide(rounds, PREFERENCE)


def test_the_best_compressed_stage_ships_and_a_losing_distillation_is_stated():
    choice = choose(_rows(finetune=0.269, distill=0.245))
    assert choice.stage == "finetune" and choice.decided_by == "mAP50-95"
    assert choice.reason == "distill mAP50-95 0.245 < finetune 0.269: shipping finetune"


def test_a_winning_distillation_ships():
    choice = choose(_rows(finetune=0.269, distill=0.281))
    assert choice.stage == "distill"
    assert choice.reason == "distill mAP50-95 0.281 > finetune 0.269: shipping distill"


def test_the_unpruned_model_never_ships_however_good():
    assert choose(_rows()).stage != "sparse"


def test_pruned_alone_can_win_and_is_named():
    choice = choose(_rows(pruned=0.30, finetune=0.02, distill=0.01))
    assert choice.stage == "pruned"
    assert choice.reason == (
        "distill mAP50-95 0.010 < finetune 0.020, pruned 0.300 higher: shipping pruned"
    )


def test_a_tie_goes_to_the_faster_when_beyond_noise():
    timing = _timing(
        sparse=(9.0, 0.1), pruned=(3.0, 0.05), finetune=(3.6, 0.05), distill=(3.0, 0.05)
    )
    choice = choose(_rows(finetune=0.2691, distill=0.2689), timing)  # equal at 3 decimals
    assert choice.stage == "distill" and choice.decided_by == "latency"
    assert choice.reason.startswith("distill mAP50-95 0.269 = finetune 0.269, distill faster (")
    assert choice.reason.endswith(": shipping distill")


def test_a_tie_within_noise_goes_to_the_simpler_recipe():
    timing = _timing(sparse=(9.0, 0.1), pruned=(3.0, 0.2), finetune=(3.05, 0.2), distill=(3.0, 0.2))
    choice = choose(_rows(finetune=0.269, distill=0.269), timing)
    assert choice.stage == "finetune" and choice.decided_by == "preference"
    assert "latency within noise" in choice.reason
    assert choice.reason.endswith(
        "finetune preferred when tied (simpler recipe): shipping finetune"
    )


@pytest.mark.parametrize("finetune_ms, within", [(3.05, True), (3.9, False)])
def test_same_architecture_stages_are_said_to_be_within_noise_or_not(finetune_ms, within):
    timing = _timing(
        sparse=(9.0, 0.1), pruned=(3.0, 0.1), finetune=(finetune_ms, 0.1), distill=(3.0, 0.1)
    )
    notes = latency_notes(_rows(), timing)
    same = [n for n in notes if "(same architecture)" in n]
    assert len(same) == 1 and same[0].startswith("latency: pruned, finetune, distill")
    assert ("differences within noise" in same[0]) is within
    assert ("differ beyond the noise" in same[0]) is not within
    speed = "latency: pruned 3.00 ms vs sparse 9.00 ms: 3.00x faster"
    assert any(n.startswith(speed) for n in notes)
