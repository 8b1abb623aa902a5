"""The MAVLink sink against real pymavlink endpoints on loopback: a ground station (udpin) that
must receive the exact STATUSTEXT / NAMED_VALUE_FLOAT / HEARTBEAT messages, a simulated vehicle
whose GLOBAL_POSITION_INT must land in the alert a JSON-lines sink records, a serial link on a real
pseudo-terminal (and what happens when its far end dies), and the one-line errors for bad
connection strings and bad [outputs.mavlink] tables. Frames come from the real Classifier and
Detector, so the alert shapes are the pipeline's."""

import itertools
import json
import os
import select
import socket
import sys
import threading
import time
from typing import Any, Callable, List

import numpy as np
import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import LetterboxTransform
from glimmer.runtime.stream.alerts import AlertEvent, RateLimiter
from glimmer.runtime.stream.classify import Classifier, ClassifySettings
from glimmer.runtime.stream.detect import Detector
from glimmer.runtime.stream.mavlink import MavlinkSettings, MavlinkSink
from glimmer.runtime.stream.sinks import FrameResult, JsonLinesSink

mavutil = pytest.importorskip(
    "pymavlink.mavutil", reason="pymavlink missing: pip install 'glimmer-edge[mavlink]'"
)

CLASSES = ["Earthquake", "Fire", "Flood", "Normal"]
# softmax([0, 3, 0, 0])[1] = e^3 / (e^3 + 3) = 0.8700: the alert's score, "0.87" in the text
FIRE = np.array([0.0, 3.0, 0.0, 0.0])
FLOOD = np.array([0.0, 0.0, 3.0, 0.0])
NORMAL = np.array([0.0, 0.0, 0.0, 3.0])
K = 3
LAT, LON = 47.3977419, 8.5455938  # degrees; sent as degE7 integers
MAV_SEVERITY_ALERT, MAV_SEVERITY_WARNING = 1, 4


def classifier() -> Classifier:
    meta = ModelMeta(task="classify", name="t", class_names=CLASSES, input_size=(32, 32))
    return Classifier(meta, ClassifySettings(smoothing=0.0, alert_threshold=0.7, alert_frames=K))


def results(clf: Classifier, logits: List[np.ndarray], start: int = 0) -> List[FrameResult]:
    return [
        FrameResult(start + i, (start + i) / 30.0, clf.frame(row)) for i, row in enumerate(logits)
    ]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def drain(conn: Any, types: List[str], settle: float = 0.3) -> List[Any]:
    """Every message of ``types`` waiting on ``conn`` (all sent before this call: loopback UDP
    datagrams are queued by the time sendto returns)."""
    out = []
    while True:
        msg = conn.recv_match(blocking=True, timeout=settle)
        if msg is None:
            return out
        if msg.get_type() in types:
            out.append(msg)


def receive(conn: Any, types: List[str], count: int, timeout: float = 10.0) -> List[Any]:
    """The next ``count`` messages of ``types`` (the sink's worker thread sends them: wait)."""
    out: List[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"received {len(out)} of {count} {types} within {timeout} s")
        msg = conn.recv_match(type=types, blocking=True, timeout=min(left, 1.0))
        if msg is not None:
            out.append(msg)
    return out


@pytest.fixture
def gcs():
    """A ground station listening on a free loopback port (pymavlink's own UDP connection)."""
    conn = mavutil.mavlink_connection("udpin:127.0.0.1:0")
    conn.port_number = conn.port.getsockname()[1]
    yield conn
    conn.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_alert_reaches_the_ground_station_once_with_value_and_heartbeats(gcs):
    settings = MavlinkSettings(
        connect=f"udpout:127.0.0.1:{gcs.port_number}",
        source_system=7,
        source_component=200,
        named_values=True,
        heartbeat_s=0.2,
    )
    logs: List[str] = []
    sink = MavlinkSink(settings, log=logs.append)
    beats = [
        wait_for(lambda: gcs.recv_match(type="HEARTBEAT", blocking=True, timeout=1), what="beat")
        for _ in range(2)
    ]
    clf = classifier()
    frames = results(clf, [NORMAL] + [FIRE] * (K + 3))  # the alert starts on frame K and goes on
    for result in frames:
        sink.write(result)
    sink.close()
    got = drain(gcs, ["STATUSTEXT", "NAMED_VALUE_FLOAT"])

    for beat in beats:
        assert (beat.type, beat.autopilot, beat.system_status) == (18, 8, 4)
        assert (beat.get_srcSystem(), beat.get_srcComponent()) == (7, 200)
    assert [m.get_type() for m in got] == ["STATUSTEXT", "NAMED_VALUE_FLOAT"]
    text, value = got
    assert text.text == "GLIMMER Fire 0.87 3f" and text.severity == MAV_SEVERITY_ALERT
    assert (text.get_srcSystem(), text.get_srcComponent()) == (7, 200)
    assert value.name == "Fire" and value.value == pytest.approx(0.87, abs=1e-6)
    # every alert frame carries the position (none known: no vehicle on this link)
    assert [r.prediction["alert"]["position"] for r in frames[K:]] == [None] * 4
    assert all(r.prediction["alert"] is None for r in frames[:K])
    assert sink.stats["statustext"] == 1 and sink.stats["send_errors"] == 0
    assert logs == [
        f"mavlink: 1 alerts sent to udpout:127.0.0.1:{gcs.port_number} (0 held by the rate "
        "limit, 0 merged), 0 dropped, 0 send errors, 0 positions received"
    ]


def test_rate_limit_is_per_class_holds_and_merges_and_flushes_at_close(gcs):
    sink = MavlinkSink(
        MavlinkSettings(
            connect=f"udpout:127.0.0.1:{gcs.port_number}", min_interval_s=600.0, severity="warning"
        ),
        log=lambda line: None,
    )
    clf = classifier()
    burst = [FIRE] * K + [NORMAL]  # one Fire alert start, then a break
    for result in results(clf, burst * 3 + [FLOOD] * K):
        sink.write(result)
    before_close = receive(gcs, ["STATUSTEXT"], 2)
    sink.close()
    after_close = drain(gcs, ["STATUSTEXT"])

    # Fire at once; Flood is another class, at once too; the 2nd and 3rd Fire are held, the 3rd
    # replacing the 2nd (+1), and sent when the run ends.
    assert [m.text for m in before_close] == ["GLIMMER Fire 0.87 3f", "GLIMMER Flood 0.87 3f"]
    assert [m.text for m in after_close] == ["GLIMMER Fire 0.87 3f +1"]
    assert all(m.severity == MAV_SEVERITY_WARNING for m in before_close + after_close)
    assert (sink.limiter.held, sink.limiter.merged) == (2, 1)


def test_a_held_alert_is_sent_when_its_interval_is_over(gcs):
    sink = MavlinkSink(
        MavlinkSettings(connect=f"udpout:127.0.0.1:{gcs.port_number}", min_interval_s=1.0),
        log=lambda line: None,
    )
    clf = classifier()
    for result in results(clf, [FIRE] * K + [NORMAL] + [FIRE] * K):
        sink.write(result)
    first = receive(gcs, ["STATUSTEXT"], 1)
    later = itertools.count(100)

    def next_frame_releases() -> Any:  # any frame after the interval releases the held alert
        sink.write(results(clf, [NORMAL], start=next(later))[0])
        return gcs.recv_match(type="STATUSTEXT", blocking=True, timeout=0.05)

    released = wait_for(next_frame_releases, what="the held alert")
    sink.close()
    assert [m.text for m in first] == ["GLIMMER Fire 0.87 3f"]
    assert released.text == "GLIMMER Fire 0.87 3f"
    assert drain(gcs, ["STATUSTEXT"]) == []  # nothing left to flush at close
    assert (sink.limiter.held, sink.limiter.merged) == (1, 0)


def test_rate_limiter_releases_in_time_per_key():
    def event(key: str, index: int) -> AlertEvent:
        return AlertEvent(key, key, 0.9, K, 0, index, index / 30.0)

    limiter = RateLimiter(1.0)
    sent = lambda pairs: [(e.key, e.index, merged) for e, merged in pairs]  # noqa: E731
    assert sent(limiter.offer(event("Fire", 1), now=10.0)) == [("Fire", 1, 0)]
    assert sent(limiter.offer(event("Fire", 2), now=10.2)) == []  # held
    assert sent(limiter.offer(event("Flood", 3), now=10.3)) == [("Flood", 3, 0)]  # other key
    assert sent(limiter.offer(event("Fire", 4), now=10.5)) == []  # replaces 2, merging it
    assert sent(limiter.due(10.99)) == []
    assert sent(limiter.due(11.0)) == [("Fire", 4, 1)]
    assert sent(limiter.offer(event("Fire", 5), now=11.5)) == []  # 0.5 s after that send
    assert sent(limiter.drain()) == [("Fire", 5, 0)]
    assert (limiter.held, limiter.merged) == (3, 1)
    assert event("Fire", 1).text(merged=2) == "GLIMMER Fire 0.90 3f +2"
    long = AlertEvent("x" * 80, "x" * 80, 0.5, 12, 0, 0, 0.0)
    assert long.text() == "GLIMMER " + "x" * 33 + " 0.50 12f"
    assert len(long.text()) == 50


def test_vehicle_position_lands_in_the_alert_and_in_the_json_lines_after_it(gcs, tmp_path):
    vehicle_port = free_udp_port()
    sink = MavlinkSink(
        MavlinkSettings(
            connect=f"udpout:127.0.0.1:{gcs.port_number}",
            position=f"udpin:127.0.0.1:{vehicle_port}",
        ),
        log=lambda line: None,
    )
    jsonl = JsonLinesSink(tmp_path / "results.jsonl")
    vehicle = mavutil.mavlink_connection(
        f"udpout:127.0.0.1:{vehicle_port}", source_system=1, source_component=1
    )
    try:

        def send_position() -> Any:
            vehicle.mav.global_position_int_send(
                12345, int(round(LAT * 1e7)), int(round(LON * 1e7)), 488000, 20000, 0, 0, 0, 9000
            )
            return sink.position()

        wait_for(send_position, what="the vehicle's position at the sink")
        # the autopilot hears the companion computer's heartbeat on its link
        beat = wait_for(
            lambda: vehicle.recv_match(type="HEARTBEAT", blocking=True, timeout=1), what="beat"
        )
        assert (beat.get_srcSystem(), beat.get_srcComponent()) == (1, 191)
        clf = classifier()
        for result in results(clf, [FIRE] * (K + 1)):
            for s in (sink, jsonl):  # the order glimmer-run uses: MAVLink before JSON lines
                s.write(result)
    finally:
        vehicle.close()
        sink.close()
        jsonl.close()
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    alerts = [r["predictions"]["alert"] for r in records]
    assert alerts[: K - 1] == [None] * (K - 1)
    for alert in alerts[K - 1 :]:
        position = alert["position"]
        assert position["lat"] == pytest.approx(LAT, abs=1e-7)
        assert position["lon"] == pytest.approx(LON, abs=1e-7)
        assert (position["alt_m"], position["relative_alt_m"], position["heading"]) == (
            488.0,
            20.0,
            90.0,
        )
        assert 0.0 <= position["age_s"] < 60.0
    assert sink.stats["positions"] >= 1
    assert [m.text for m in drain(gcs, ["STATUSTEXT"])] == ["GLIMMER Fire 0.87 3f"]


def test_detections_announce_each_class_once_with_counts(gcs):
    meta = ModelMeta(task="detect", name="d", class_names=["person", "car"], input_size=(64, 64))
    detector = Detector(meta)
    identity = [LetterboxTransform(1.0, 1.0, 0.0, 0.0, 64, 64)]

    def frame(index: int, boxes: List[List[float]]) -> FrameResult:
        head = np.zeros((1, 6, 4), np.float32)  # [cx, cy, w, h, person, car] per anchor
        for anchor, box in enumerate(boxes):
            head[0, :, anchor] = box
        return FrameResult(index, index / 30.0, detector([head], identity)[0])

    two_people = [[10, 10, 8, 8, 0.9, 0.0], [40, 40, 8, 8, 0.6, 0.0]]
    car = [[20, 50, 10, 6, 0.0, 0.8]]
    sink = MavlinkSink(
        MavlinkSettings(
            connect=f"udpout:127.0.0.1:{gcs.port_number}", named_values=True, min_interval_s=600.0
        ),
        log=lambda line: None,
    )
    frames = [frame(0, []), frame(1, two_people), frame(2, two_people), frame(3, two_people + car)]
    for result in frames:
        sink.write(result)
    sink.close()
    got = drain(gcs, ["STATUSTEXT", "NAMED_VALUE_FLOAT"])
    texts = [m.text for m in got if m.get_type() == "STATUSTEXT"]
    values = [(m.name, m.value) for m in got if m.get_type() == "NAMED_VALUE_FLOAT"]
    assert texts == ["GLIMMER person x2 0.90", "GLIMMER car x1 0.80"]
    # GL_COUNT once per interval (frame 0: no boxes), each class's count with its announcement
    assert values == [("GL_COUNT", 0.0), ("person", 2.0), ("car", 1.0)]
    assert "position" not in frames[0].prediction  # only frames with boxes get one
    assert [f.prediction["position"] for f in frames[1:]] == [None] * 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals: Linux")
def test_serial_link_on_a_pty_round_trip_then_dead_port_is_counted_not_raised():
    pytest.importorskip("serial", reason="pyserial missing: pip install 'glimmer-edge[mavlink]'")
    master, slave = os.openpty()
    device = os.ttyname(slave)
    logs: List[str] = []
    sink = MavlinkSink(MavlinkSettings(connect=device, baud=57600), log=logs.append)
    autopilot = mavutil.mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
    received: List[Any] = []
    master_open = threading.Event()
    master_open.set()

    def read_master() -> None:  # the autopilot's side of the wire
        parser = mavutil.mavlink.MAVLink(None)
        while master_open.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    return
                received.extend(parser.parse_buffer(data) or [])

    reader = threading.Thread(target=read_master, daemon=True)
    reader.start()
    try:
        msg = autopilot.global_position_int_encode(
            1, int(LAT * 1e7), int(LON * 1e7), 0, 0, 0, 0, 0, 65535
        )

        def send_position() -> Any:
            os.write(master, msg.pack(autopilot))
            return sink.position()

        position = wait_for(send_position, what="the position over the serial link")
        assert position["heading"] is None  # 65535: unknown
        clf = classifier()
        for result in results(clf, [FIRE] * K):
            sink.write(result)
        wait_for(lambda: any(m.get_type() == "STATUSTEXT" for m in received), what="the STATUSTEXT")
        assert [m.text for m in received if m.get_type() == "STATUSTEXT"] == [
            "GLIMMER Fire 0.87 3f"
        ]
        assert any(m.get_type() == "HEARTBEAT" for m in received)

        # The far end goes away: every later send fails, is counted, reported once, never raised.
        master_open.clear()
        reader.join(timeout=5.0)
        os.close(master)
        for result in results(clf, ([NORMAL] + [FLOOD] * K) * 3, start=K):
            sink.write(result)
        wait_for(lambda: sink.stats["send_errors"] >= 2, what="failed sends to be counted")
    finally:
        sink.close()
        os.close(slave)
    failures = [line for line in logs if "failed" in line and "sending to" in line]
    assert failures == [
        f"mavlink: sending to {device} failed (the port is dead (unplugged or closed)); further "
        "errors are counted"
    ]


@pytest.mark.parametrize(
    "connect, message",
    [
        ("udpout:no-such-host.invalid:14550", "cannot resolve host 'no-such-host.invalid'"),
        ("udpout:127.0.0.1:radio", "expected HOST:PORT after udpout:"),
        ("udpout:127.0.0.1:0", "port 0 is not a destination"),
        ("udpin:203.0.113.7:14550", "cannot open: Cannot assign requested address"),
        ("/dev/ttyGLIMMER-NOPE", "no such serial device"),
        ("tcp:127.0.0.1:5760", "not a connection this sink opens; use udpout:HOST:PORT"),
        ("ground-station", "not a connection this sink opens"),
    ],
)
def test_a_connection_that_cannot_be_opened_is_one_line_naming_it(connect, message):
    with pytest.raises(GlimmerError) as info:
        MavlinkSink(MavlinkSettings(connect=connect), log=lambda line: None)
    text = str(info.value)
    assert text.startswith(f"[outputs.mavlink] connect {connect!r}: ") and message in text
    assert "\n" not in text


def test_a_udp_port_in_use_is_one_line_and_the_first_link_is_closed(gcs):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEADDR: nobody else may bind it
        port = taken.getsockname()[1]
        with pytest.raises(GlimmerError) as info:
            MavlinkSink(
                MavlinkSettings(
                    connect=f"udpout:127.0.0.1:{gcs.port_number}",
                    position=f"udpin:127.0.0.1:{port}",
                ),
                log=lambda line: None,
            )
    assert str(info.value) == (
        f"[outputs.mavlink] position 'udpin:127.0.0.1:{port}': cannot open: Address already in use"
    )


@pytest.mark.parametrize(
    "table, message",
    [
        (
            {"connect": "udpout:127.0.0.1:14550", "min_interval": 2.0},
            "deploy.toml: [outputs.mavlink] unknown key 'min_interval' (did you mean "
            "'min_interval_s'?)",
        ),
        (
            {"connect": "udpout:127.0.0.1:14550", "baud": "57600"},
            "deploy.toml: [outputs.mavlink] key 'baud' must be an integer, got string '57600'",
        ),
        (
            {"connect": "udpout:127.0.0.1:14550", "severity": "alrt"},
            "deploy.toml: [outputs.mavlink] key 'severity' must be one of emergency, alert, "
            "critical, error, warning, notice, info, debug, got 'alrt' (did you mean 'alert'?)",
        ),
        (
            {"connect": "udpout:127.0.0.1:14550", "named_values": 1},
            "deploy.toml: [outputs.mavlink] key 'named_values' must be true or false, got "
            "integer 1",
        ),
        (
            {"connect": "udpout:127.0.0.1:14550", "source_component": 256},
            "deploy.toml: [outputs.mavlink] key 'source_component' must be at most 255, got 256",
        ),
        ({"baud": 57600}, "deploy.toml: [outputs.mavlink] key 'connect' is required"),
        ("udpout:127.0.0.1:14550", "deploy.toml: [outputs.mavlink] must be a table, got string"),
    ],
)
def test_bad_tables_are_one_line_naming_the_key(table, message):
    with pytest.raises(GlimmerError) as info:
        MavlinkSettings.from_table(table, "deploy.toml")
    assert str(info.value) == message


def test_a_good_table_sets_every_key():
    table = {
        "connect": "/dev/ttyTHS1",
        "position": "udpin:0.0.0.0:14551",
        "baud": 921600,
        "source_system": 2,
        "source_component": 192,
        "min_interval_s": 5,
        "named_values": True,
        "severity": "critical",
        "heartbeat_s": 0.5,
    }
    settings = MavlinkSettings.from_table(table, "deploy.toml")
    assert settings == MavlinkSettings(**dict(table, min_interval_s=5.0))
    assert isinstance(settings.min_interval_s, float)
    defaults = MavlinkSettings.from_table({"connect": "udpout:10.0.0.2:14550"}, "deploy.toml")
    assert (defaults.source_system, defaults.source_component, defaults.severity) == (
        1,
        191,
        "alert",
    )


def test_without_pymavlink_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "pymavlink" or m.startswith("pymavlink.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pymavlink", None)  # what an absent package looks like
    with pytest.raises(GlimmerError) as info:
        MavlinkSink(MavlinkSettings(connect="udpout:127.0.0.1:14550"), log=lambda line: None)
    assert str(info.value) == (
        "[outputs.mavlink] needs pymavlink: pip install 'glimmer-edge[mavlink]'"
    )
