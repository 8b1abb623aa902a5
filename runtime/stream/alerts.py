"""What both alert sinks (MAVLink, MQTT) share: their settings tables and alert starts.

- :func:`check_table`: a deploy.toml sub-table (``[outputs.mavlink]``, ``[outputs.mqtt]``) checked
  key by key, one error line naming the table and key, with a did-you-mean.
- :class:`AlertTracker`: alert *starts* from the stream of predictions (a classifier's alert on its
  K-th frame, a detected class that was absent the frame before), so a pilot hears each once.
- :class:`RateLimiter`: at most one alert per class per interval; later ones are held and merged
  into the next one sent, never dropped without a count.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.settings import Key, check_key, did_you_mean, type_name
from glimmer.runtime.stream.sinks import FrameResult

TEXT_BYTES = 50  # STATUSTEXT.text is char[50]: the one-line form of an alert fits it
TEXT_PREFIX = "GLIMMER"


# -- settings tables ---------------------------------------------------------------------------
def check_table(
    table: Any, section: str, keys: Dict[str, Key], origin: str, required: Sequence[str] = ()
) -> Dict[str, Any]:
    """The table's values, type-checked; any mistake is one line naming ``[section] key``, worded
    as deploy.toml's other keys are."""
    where = f"{origin}: [{section}]"
    if not isinstance(table, dict):
        raise GlimmerError(f"{where} must be a table, got {type_name(table)}")
    values: Dict[str, Any] = {}
    for name, value in table.items():
        if name not in keys:
            raise GlimmerError(f"{where} unknown key {name!r}{did_you_mean(name, keys)}")
        values[name] = check_key(value, keys[name], f"{where} key {name!r}")
    for name in required:
        if name not in values:
            raise GlimmerError(f"{where} key {name!r} is required")
    return values


# -- alerts: what is worth telling the pilot, and how often -------------------------------------
@dataclass
class AlertEvent:
    """An alert starting on one frame: a classifier's alert, or a class appearing in detections."""

    key: str  # rate-limit key: the class name
    label: str
    score: float
    frames: int  # classify: consecutive frames; detect: 0
    count: int  # detect: boxes of the class; classify: 0
    index: int
    timestamp: float
    position: Optional[Dict[str, Any]] = None

    def text(self, merged: int = 0, limit: int = TEXT_BYTES) -> str:
        """``GLIMMER Fire 0.97 5f`` / ``GLIMMER person x3 0.91``, ``+N`` when alerts were merged;
        the label is shortened to keep the whole within ``limit`` UTF-8 bytes."""
        tail = (
            f" {self.score:.2f} {self.frames}f"
            if not self.count
            else f" x{self.count} {self.score:.2f}"
        )
        if merged:
            tail += f" +{merged}"
        room = limit - len(TEXT_PREFIX) - 1 - len(tail.encode("utf-8"))
        label = self.label.encode("utf-8")[: max(room, 1)].decode("utf-8", "ignore")
        return f"{TEXT_PREFIX} {label}{tail}"

    def as_dict(self, merged: int = 0) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "task": "detect" if self.count else "classify",
            "name": self.label,
            "confidence": self.score,
        }
        if self.count:
            out["count"] = self.count
        else:
            out["frames"] = self.frames
        out.update(
            {
                "frame": self.index,
                "timestamp": round(self.timestamp, 6),
                "merged": merged,
                "position": self.position,
            }
        )
        return out


class AlertTracker:
    """Alert starts from a stream of predictions (the detector keeps the classes of the last
    frame, so a class still in view is not announced again)."""

    def __init__(self) -> None:
        self._present: Set[str] = set()

    def events(self, result: FrameResult) -> List[AlertEvent]:
        pred = result.prediction
        alert = pred.get("alert")
        if isinstance(alert, dict):
            if not alert.get("new"):
                return []
            return [
                AlertEvent(
                    str(alert["name"]),
                    str(alert["name"]),
                    float(alert["confidence"]),
                    int(alert.get("frames", 0)),
                    0,
                    result.index,
                    result.timestamp,
                    alert.get("position"),
                )
            ]
        if pred.get("task") != "detect":
            return []
        best: Dict[str, Tuple[float, int]] = {}
        for det in pred.get("detections", []):
            score, count = best.get(det["name"], (0.0, 0))
            best[det["name"]] = (max(score, float(det["confidence"])), count + 1)
        started = [c for c in best if c not in self._present]
        self._present = set(best)
        return [
            AlertEvent(
                c,
                c,
                best[c][0],
                0,
                best[c][1],
                result.index,
                result.timestamp,
                pred.get("position"),
            )
            for c in started
        ]


class RateLimiter:
    """Per key, at most one event per ``interval_s``; an event inside the interval is held and
    released when it is over, a later one replacing it and counting it as merged."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: Dict[str, float] = {}
        self._pending: Dict[str, Tuple[AlertEvent, int]] = {}
        self.held = 0  # events not sent when they happened
        self.merged = 0  # events never sent on their own (folded into a later one)

    def offer(self, event: AlertEvent, now: float) -> List[Tuple[AlertEvent, int]]:
        """(event, merged) pairs to send now: those whose interval is over, this one if free."""
        out = self.due(now)
        last = self._last.get(event.key)
        if last is None or now - last >= self.interval_s:
            self._last[event.key] = now
            out.append((event, 0))
            return out
        self.held += 1
        previous = self._pending.get(event.key)
        if previous is not None:
            self.merged += 1
        self._pending[event.key] = (event, previous[1] + 1 if previous else 0)
        return out

    def due(self, now: float) -> List[Tuple[AlertEvent, int]]:
        out = []
        for key in [k for k in self._pending if now - self._last[k] >= self.interval_s]:
            self._last[key] = now
            out.append(self._pending.pop(key))
        return out

    def drain(self) -> List[Tuple[AlertEvent, int]]:
        """Everything still held (the end of the run: the last word is never lost)."""
        out = list(self._pending.values())
        self._pending.clear()
        return out
