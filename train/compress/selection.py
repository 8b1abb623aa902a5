"""Which compressed model ships, and what the latency figures can and cannot tell apart.

The best compressed stage (pruned, finetune, distill) by mAP50-95 on val (ultralytics' validator,
``summary.MAP_DEFINITION``) ships. Scores are compared
as the table shows them (3 decimals): equal there is a tie, decided by the interleaved latency
(:func:`glimmer.runtime.core.timing.decide`: faster only when beyond the noise), and when that is
a tie too by ``PREFERENCE`` (the simpler recipe first), so the choice is stable between runs. The
reason always compares distillation with plain fine-tuning, even (above all) when distillation lost.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from glimmer.runtime.core.timing import REL_FLOOR, SPEED, Comparison, decide

COMPRESSED = ("pruned", "finetune", "distill")
PREFERENCE = ("finetune", "distill", "pruned")


@dataclass
class Choice:
    stage: str
    reason: str  # one line, e.g. "distill mAP50-95 0.245 < finetune 0.269: shipping finetune"
    decided_by: str  # "mAP50-95", "latency" or "preference"
    scores: Dict[str, float]  # candidate -> mAP50-95 as compared (3 decimals)


def _ms(cmp: Comparison, stage: str) -> str:
    return f"{cmp.median_ms[stage]:.2f}"


def choose(rows: Sequence[Mapping[str, Any]], latency: Optional[Comparison] = None) -> Choice:
    """The compressed stage to ship from the summary rows (``map50_95`` each) and the timing."""
    scores = {
        r["stage"]: round(float(r["map50_95"]), 3)
        for r in rows
        if r["stage"] in COMPRESSED and r.get("map50_95") is not None
    }
    if not scores:
        raise ValueError("no compressed stage with a mAP50-95 to choose from")
    top = max(scores.values())
    tied = [s for s in PREFERENCE if scores.get(s) == top]
    note, decided_by = "", "mAP50-95"
    stage = tied[0]
    if len(tied) > 1:
        timed = [s for s in tied if latency is not None and s in latency.round_medians_ms]
        if len(timed) == len(tied):
            cmp = decide({s: latency.round_medians_ms[s] for s in tied}, PREFERENCE)
            stage = cmp.chosen
            noise = max(cmp.noise_ms[s] for s in tied)
            times = ", ".join(f"{s} {_ms(cmp, s)}" for s in tied)
            if cmp.decided_by == SPEED:
                decided_by = "latency"
                note = f", {stage} faster ({times} ms; noise up to {noise:.2f})"
            else:
                decided_by = "preference"
                note = f", latency within noise ({times} ms; noise up to {noise:.2f})"
        else:
            decided_by = "preference"
        if decided_by == "preference":
            note += f", {stage} preferred when tied (simpler recipe)"
    if "distill" in scores and "finetune" in scores:
        d, f = scores["distill"], scores["finetune"]
        op = "<" if d < f else ">" if d > f else "="
        head = f"distill mAP50-95 {d:.3f} {op} finetune {f:.3f}"
        if stage not in ("distill", "finetune"):
            head += f", {stage} {scores[stage]:.3f} higher"
    else:
        head = f"{stage} mAP50-95 {scores[stage]:.3f}, the best of " + ", ".join(
            f"{s} {v:.3f}" for s, v in scores.items()
        )
    return Choice(stage, f"{head}{note}: shipping {stage}", decided_by, scores)


def _within(cmp: Comparison, a: str, b: str) -> bool:
    """``decide``'s tie rule for one pair: medians apart by no more than the larger noise (and
    never less than REL_FLOOR of the faster)."""
    ma, mb = cmp.median_ms[a], cmp.median_ms[b]
    return abs(ma - mb) <= max(cmp.noise_ms[a], cmp.noise_ms[b], REL_FLOOR * min(ma, mb))


def latency_notes(rows: Sequence[Mapping[str, Any]], cmp: Comparison) -> List[str]:
    """What the timing says: same-architecture stages within noise (or not), and the speed-up of
    each smaller architecture over the largest."""
    groups: Dict[Any, List[str]] = {}
    for r in rows:
        if r["stage"] in cmp.median_ms:
            groups.setdefault((r["params"], r["gflops"]), []).append(r["stage"])
    lines = []
    for stages in groups.values():
        if len(stages) < 2:
            continue
        meds = [cmp.median_ms[s] for s in stages]
        noise = max(cmp.noise_ms[s] for s in stages)
        lo, hi = f"{min(meds):.2f}", f"{max(meds):.2f}"
        span = f"{lo} ms" if lo == hi else f"{lo}-{hi} ms"
        pairs = [(a, b) for i, a in enumerate(stages) for b in stages[i + 1 :]]
        apart = [(a, b) for a, b in pairs if not _within(cmp, a, b)]
        if not apart:
            lines.append(
                f"latency: {', '.join(stages)} (same architecture): {span}, "
                f"differences within noise (noise up to {noise:.2f} ms)"
            )
        else:
            a, b = apart[0]
            lines.append(
                f"latency: {', '.join(stages)} (same architecture): {span}; {a} vs {b} differ "
                f"beyond the noise ({noise:.2f} ms): a busy machine, or weights that change the "
                "kernels' speed (denormal values)"
            )
    keys = list(groups)
    if len(keys) > 1:
        big = max(keys, key=lambda k: k[1])
        ref = groups[big][0]
        for k in keys:
            if k == big:
                continue
            s = groups[k][0]
            speed = cmp.median_ms[ref] / max(cmp.median_ms[s], 1e-9)
            verdict = "within noise" if _within(cmp, ref, s) else f"{speed:.2f}x faster"
            lines.append(f"latency: {s} {_ms(cmp, s)} ms vs {ref} {_ms(cmp, ref)} ms: {verdict}")
    return lines
