"""Reading detections as the runtime writes them (ultralytics' summary keys)."""

from typing import Any, Dict, List


def xyxy(det: Dict[str, Any]) -> List[float]:
    """A detection's box ``{"x1", "y1", "x2", "y2"}`` as a list, for comparisons."""
    return [det["box"][k] for k in ("x1", "y1", "x2", "y2")]
