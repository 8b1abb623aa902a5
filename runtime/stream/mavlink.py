"""Alerts to the pilot's ground station over MAVLink: a :class:`Sink` on the pipeline's output.

Messages (https://mavlink.io/en/messages/common.html), sent with pymavlink:

- STATUSTEXT when an alert starts (``"GLIMMER Fire 0.97 5f"``; at most 50 characters, what the
  message holds): a classifier's alert on its K-th frame, or a detected class that was absent in
  the previous frame. Ground stations show these in their message list and speak ALERT ones.
- NAMED_VALUE_FLOAT (``named_values``): the alert's score, or a detected class's box count, under
  the class name (10 characters at most); for detectors also ``GL_COUNT``, the frame's boxes.
- HEARTBEAT (MAV_TYPE_ONBOARD_CONTROLLER) every second, so ground stations list the component and
  autopilots route to it.

Alerts are rate-limited per class: one that comes within ``min_interval_s`` of the last one sent
for its class is held and sent when the interval is over (or at the end of the run); several held
ones are merged into the newest, its text ending ``+N`` (N earlier alerts folded in). Nothing is
lost without a count.

The vehicle's position (GLOBAL_POSITION_INT, read on the same connection or on ``position``) is
written into the result, ``prediction["alert"]["position"]`` (and ``prediction["position"]`` for
detection frames with boxes), so that a JSON-lines or MQTT sink placed AFTER this one records where
the drone was.

The pipeline never waits on the network: ``write`` only queues; a worker thread sends and a reader
thread per connection receives. A send error is reported once and counted, never raised per frame.
pymavlink (and pyserial for serial ports) are imported only when the sink is created:
``pip install 'glimmer-edge[mavlink]'``.
"""

import os
import queue
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.settings import Key
from glimmer.runtime.stream.alerts import (
    TEXT_BYTES,
    AlertEvent,
    AlertTracker,
    RateLimiter,
    check_table,
)
from glimmer.runtime.stream.sinks import FrameResult, Sink

SECTION = "outputs.mavlink"
#: MAV_SEVERITY names, in the enum's order (0 = EMERGENCY ... 7 = DEBUG)
SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
MAV_COMP_ID_ONBOARD_COMPUTER = 191
MAV_TYPE_ONBOARD_CONTROLLER = 18
MAV_AUTOPILOT_INVALID = 8
MAV_STATE_ACTIVE = 4
NAME_BYTES = 10  # NAMED_VALUE_FLOAT.name is char[10]
UDP_FORMS = ("udpout:", "udpin:", "udp:")
CONNECT_FORMS = (
    "udpout:HOST:PORT (send to a ground station), udpin:HOST:PORT or udp:HOST:PORT (listen), "
    "or a serial device such as /dev/ttyTHS1 (with baud)"
)


# -- settings ------------------------------------------------------------------------------------
@dataclass
class MavlinkSettings:
    """``[outputs.mavlink]`` of deploy.toml.

    Attributes:
        connect: where alerts go (see ``CONNECT_FORMS``); GLOBAL_POSITION_INT is read here too.
        position: a second connection to read the vehicle's position from (the autopilot's serial
            port when ``connect`` is the radio's UDP link); None: ``connect``.
        baud: serial ports' rate (the autopilot's SERIALn_BAUD).
        source_system: our MAVLink system id; a companion computer shares its vehicle's (1).
        source_component: our component id (191, MAV_COMP_ID_ONBOARD_COMPUTER).
        min_interval_s: per class, the least time between two STATUSTEXT messages.
        named_values: also send NAMED_VALUE_FLOAT (alert score, box counts).
        severity: STATUSTEXT severity, a MAV_SEVERITY name in lower case.
        heartbeat_s: seconds between two HEARTBEATs.
    """

    connect: str
    position: Optional[str] = None
    baud: int = 115200
    source_system: int = 1
    source_component: int = MAV_COMP_ID_ONBOARD_COMPUTER
    min_interval_s: float = 1.0
    named_values: bool = False
    severity: str = "alert"
    heartbeat_s: float = 1.0

    KEYS = {
        "connect": Key("str"),
        "position": Key("str"),
        "baud": Key("int", minimum=50),
        "source_system": Key("int", minimum=1, maximum=255),
        "source_component": Key("int", minimum=1, maximum=255),
        "min_interval_s": Key("float", minimum=0.0),
        "named_values": Key("bool"),
        "severity": Key("str", choices=SEVERITIES),
        "heartbeat_s": Key("float", minimum=0.1, maximum=60.0),
    }

    @classmethod
    def from_table(cls, table: Dict[str, Any], origin: str) -> "MavlinkSettings":
        """Validated settings from the parsed table; ``origin`` names the file in errors."""
        return cls(**check_table(table, SECTION, cls.KEYS, origin, required=("connect",)))


# -- pymavlink --------------------------------------------------------------------------------
def _mavutil():
    try:
        from pymavlink import mavutil
    except ImportError:
        raise GlimmerError(
            f"[{SECTION}] needs pymavlink: pip install 'glimmer-edge[mavlink]'"
        ) from None
    return mavutil


def _udp_check(key: str, device: str) -> None:
    """pymavlink resolves a UDP host only when it first sends, and then drops the error: resolve
    (and check the port) now, so that a typo fails before the first frame."""
    rest = device.split(":", 1)[1]
    host, _, port = rest.rpartition(":")
    where = f"[{SECTION}] {key} {device!r}"
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise GlimmerError(f"{where}: expected HOST:PORT after {device.split(':', 1)[0]}:")
    if device.startswith("udpout:") and int(port) == 0:
        raise GlimmerError(f"{where}: port 0 is not a destination")
    try:
        socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise GlimmerError(f"{where}: cannot resolve host {host!r} ({exc})") from None


def open_connection(key: str, device: str, settings: MavlinkSettings):
    """A pymavlink connection for ``device``, or one GlimmerError line naming it."""
    where = f"[{SECTION}] {key} {device!r}"
    serial = not device.startswith(UDP_FORMS)
    if serial and not device.startswith("/dev/") and not re.match(r"COM\d+$", device.upper()):
        raise GlimmerError(f"{where}: not a connection this sink opens; use {CONNECT_FORMS}")
    mavutil = _mavutil()
    ids = {"source_system": settings.source_system, "source_component": settings.source_component}
    if not serial:
        _udp_check(key, device)
        try:
            return mavutil.mavlink_connection(device, **ids)
        except OSError as exc:
            raise GlimmerError(f"{where}: cannot open: {exc.strerror or exc}") from None
    if device.startswith("/dev/") and not os.path.exists(device):
        raise GlimmerError(f"{where}: no such serial device")
    try:
        import serial as _pyserial  # noqa: F401  (pymavlink's serial ports need pyserial)
    except ImportError:
        raise GlimmerError(
            f"{where}: serial ports need pyserial: pip install 'glimmer-edge[mavlink]'"
        ) from None
    try:
        # mavserial directly: mavlink_connection would take a path with a colon for UDP
        return mavutil.mavserial(device, baud=settings.baud, **ids)
    except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise GlimmerError(f"{where}: cannot open at {settings.baud} baud: {reason}") from None


def position_from(msg: Any, received: float) -> Dict[str, Any]:
    """GLOBAL_POSITION_INT's integers in plain units (hdg 65535 means unknown)."""
    return {
        "lat": msg.lat / 1e7,
        "lon": msg.lon / 1e7,
        "alt_m": msg.alt / 1000.0,
        "relative_alt_m": msg.relative_alt / 1000.0,
        "heading": None if msg.hdg == 65535 else msg.hdg / 100.0,
        "received": received,
    }


class _Link:
    """One connection: its lock (pymavlink's send and receive paths share state), its reader."""

    def __init__(self, key: str, device: str, conn: Any, positions: bool) -> None:
        self.key, self.device, self.conn, self.positions = key, device, conn, positions
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None


_STOP = object()


class MavlinkSink(Sink):
    """Alerts as STATUSTEXT (+ NAMED_VALUE_FLOAT) to a ground station; the vehicle's position into
    the results. Place it BEFORE the JSON-lines sink so that the position is recorded."""

    def __init__(
        self,
        settings: MavlinkSettings,
        log: Optional[Callable[[str], None]] = None,
        queue_size: int = 256,
    ) -> None:
        self.settings = settings
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.severity = SEVERITIES.index(settings.severity)
        self.stats = {
            "statustext": 0,
            "named_value_float": 0,
            "heartbeats": 0,
            "positions": 0,
            "dropped": 0,
            "send_errors": 0,
            "receive_errors": 0,
        }
        self._reported: Set[str] = set()
        self._tracker = AlertTracker()
        self.limiter = RateLimiter(settings.min_interval_s)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._position: Optional[Dict[str, Any]] = None
        self._started = time.monotonic()
        self._last_count = -1e9
        self._closed = False
        self.links: List[_Link] = []
        try:
            main = open_connection("connect", settings.connect, settings)
            self.links.append(_Link("connect", settings.connect, main, settings.position is None))
            if settings.position:
                extra = open_connection("position", settings.position, settings)
                self.links.append(_Link("position", settings.position, extra, True))
        except GlimmerError:
            self._close_links()
            raise
        for link in self.links:
            link.thread = threading.Thread(
                target=self._read, args=(link,), name=f"mavlink-{link.key}", daemon=True
            )
            link.thread.start()
        self._worker = threading.Thread(target=self._send_loop, name="mavlink-send", daemon=True)
        self._worker.start()

    # -- the pipeline's side: never blocks --------------------------------------------------------
    def position(self) -> Optional[Dict[str, Any]]:
        """The latest position, its age in seconds instead of its arrival time; None before one."""
        latest = self._position
        if latest is None:
            return None
        out = {k: v for k, v in latest.items() if k != "received"}
        out["age_s"] = round(time.monotonic() - latest["received"], 3)
        return out

    def write(self, result: FrameResult) -> None:
        pred = result.prediction
        now = time.monotonic()
        alert = pred.get("alert")
        if isinstance(alert, dict):
            alert["position"] = self.position()
        elif pred.get("task") == "detect" and pred.get("count"):
            pred["position"] = self.position()
        ready = self.limiter.due(now)
        for event in self._tracker.events(result):
            ready.extend(self.limiter.offer(event, now))
        for event, merged in ready:
            self._send_event(event, merged)
        if (
            self.settings.named_values
            and pred.get("task") == "detect"
            and now - self._last_count >= self.settings.min_interval_s
        ):
            self._last_count = now
            self._enqueue(("value", "GL_COUNT", float(pred.get("count", 0))))

    def _send_event(self, event: AlertEvent, merged: int) -> None:
        self._enqueue(("text", event.text(merged)))
        if self.settings.named_values:
            value = float(event.count) if event.count else event.score
            self._enqueue(("value", event.label, value))

    def _enqueue(self, item: Tuple[Any, ...]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the link is slower than the alerts: count, never wait
            self.stats["dropped"] += 1
            self._report("dropped", "mavlink: send queue full, messages dropped (counted)")

    def close(self, complete: bool = True) -> None:
        """Send what the rate limit still holds, then stop the threads and close the links."""
        if self._closed:
            return
        self._closed = True
        for event, merged in self.limiter.drain():
            self._send_event(event, merged)
        try:
            self._queue.put(_STOP, timeout=2.0)
        except queue.Full:
            pass
        self._worker.join(timeout=5.0)
        self._stopping.set()
        for link in self.links:
            if link.thread is not None:
                link.thread.join(timeout=2.0)
        self._close_links()
        s = self.stats
        self.log(
            f"mavlink: {s['statustext']} alerts sent to {self.settings.connect} "
            f"({self.limiter.held} held by the rate limit, {self.limiter.merged} merged), "
            f"{s['dropped']} dropped, {s['send_errors']} send errors, "
            f"{s['positions']} positions received"
        )

    # -- the threads -------------------------------------------------------------------------------
    def _report(self, kind: str, line: str) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            self.log(line)

    def _send(self, link: _Link, build: Callable[[Any], Any], stat: str) -> None:
        try:
            with link.lock:
                link.conn.mav.send(build(link.conn.mav))
            # pymavlink catches a dead serial port's error itself and only sets this flag
            failed = bool(getattr(link.conn, "portdead", False))
            error = "the port is dead (unplugged or closed)"
        except Exception as exc:  # any failure of the link: counted, reported once
            failed, error = True, f"{type(exc).__name__}: {exc}"
        if failed:
            self.stats["send_errors"] += 1
            self._report(
                f"send-{link.key}",
                f"mavlink: sending to {link.device} failed ({error}); further errors are counted",
            )
        else:
            self.stats[stat] += 1

    def _send_loop(self) -> None:
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_s
                for link in self.links:
                    self._send(link, self._heartbeat, "heartbeats")
            try:
                item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                continue
            if item is _STOP:
                return
            self._send(self.links[0], self._builder(item), self._STATS[item[0]])

    _STATS = {"text": "statustext", "value": "named_value_float"}

    @staticmethod
    def _heartbeat(mav: Any) -> Any:
        return mav.heartbeat_encode(
            MAV_TYPE_ONBOARD_CONTROLLER, MAV_AUTOPILOT_INVALID, 0, 0, MAV_STATE_ACTIVE
        )

    def _builder(self, item: Tuple[Any, ...]) -> Callable[[Any], Any]:
        if item[0] == "text":
            text = item[1].encode("utf-8")[:TEXT_BYTES]
            return lambda mav: mav.statustext_encode(self.severity, text)
        name = item[1].encode("utf-8")[:NAME_BYTES]
        boot_ms = int((time.monotonic() - self._started) * 1000) & 0xFFFFFFFF
        return lambda mav: mav.named_value_float_encode(boot_ms, name, item[2])

    def _read(self, link: _Link) -> None:
        """Waits outside the lock, parses inside it; keeps the newest GLOBAL_POSITION_INT."""
        own = (self.settings.source_system, self.settings.source_component)
        while not self._stopping.is_set():
            try:
                link.conn.select(0.2)
                with link.lock:
                    while True:
                        msg = link.conn.recv_match(blocking=False)
                        if msg is None:
                            break
                        if (
                            link.positions
                            and msg.get_type() == "GLOBAL_POSITION_INT"
                            and (msg.get_srcSystem(), msg.get_srcComponent()) != own
                        ):
                            self._position = position_from(msg, time.monotonic())
                            self.stats["positions"] += 1
            except Exception as exc:  # a dead port or garbage: counted, reported once, retried
                self.stats["receive_errors"] += 1
                self._report(
                    f"recv-{link.key}",
                    f"mavlink: reading {link.device} failed ({type(exc).__name__}: {exc}); "
                    "further errors are counted",
                )
                self._stopping.wait(0.5)

    def _close_links(self) -> None:
        for link in self.links:
            try:
                link.conn.close()
            except Exception:  # closing a dead port must not hide the run's result
                pass
