"""The MQTT sink against a REAL broker (Debian's mosquitto, started here on a free loopback port)
and a real paho subscriber: exact alert and summary payloads, the per-class rate limit, the
position a MAVLink sink before it wrote into the alert, and one-line errors for a broker that is
not there, refused credentials and bad [outputs.mqtt] tables. Frames come from the real
Classifier."""

import sys
import time
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
from mosquitto import APT_PACKAGE, Subscriber, broker_binary, free_port, running_broker

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.classify import Classifier, ClassifySettings
from glimmer.runtime.stream.mqtt import MqttSettings, MqttSink
from glimmer.runtime.stream.sinks import FrameResult

pytest.importorskip(
    "paho.mqtt.client", reason="paho-mqtt missing: pip install 'glimmer-edge[mqtt]'"
)

CLASSES = ["Earthquake", "Fire", "Flood", "Normal"]
FIRE = np.array([0.0, 3.0, 0.0, 0.0])  # smoothed score e^3 / (e^3 + 3) = 0.87
FLOOD = np.array([0.0, 0.0, 3.0, 0.0])
NORMAL = np.array([0.0, 0.0, 0.0, 3.0])
K = 3


def frames(logits: List[np.ndarray]) -> List[FrameResult]:
    meta = ModelMeta(task="classify", name="t", class_names=CLASSES, input_size=(32, 32))
    clf = Classifier(meta, ClassifySettings(smoothing=0.0, alert_threshold=0.7, alert_frames=K))
    return [
        FrameResult(i, i / 10.0, clf.frame(row), latency_ms={"inference": 1.5}, fps=10.0)
        for i, row in enumerate(logits)
    ]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    if broker_binary() is None:
        pytest.skip(
            f"no MQTT broker: install Debian's {APT_PACKAGE!r} (apt-get install -y {APT_PACKAGE})"
        )
    with running_broker(tmp_path) as port:
        yield port


def test_alerts_and_summaries_reach_a_real_subscriber_rate_limited(broker):
    sub = Subscriber(broker, ["glimmer/alerts", "glimmer/frames"])
    logs: List[str] = []
    sink = MqttSink(
        MqttSettings(
            host="127.0.0.1",
            port=broker,
            client_id="drone-1",
            min_interval_s=600.0,
            frames_interval_s=600.0,
        ),
        log=logs.append,
    )
    try:
        burst = [FIRE] * K + [NORMAL]
        for result in frames(burst * 2 + [FLOOD] * K):  # Fire, Fire again (held), Flood
            sink.write(result)
        before_close = sub.wait(3)
    finally:
        sink.close()
    got = sub.wait(4)
    sub.close()

    assert len(before_close) == 3 and len(got) == 4
    assert all(m["qos"] == 1 for m in got)
    summaries = [m["payload"] for m in got if m["topic"] == "glimmer/frames"]
    alerts = [m["payload"] for m in got if m["topic"] == "glimmer/alerts"]
    assert summaries == [
        {
            "event": "frame",
            "task": "classify",
            "frame": 0,
            "timestamp": 0.0,
            "fps": 10.0,
            "latency_ms": {"inference": 1.5},
            "name": "Fire",
            "confidence": 0.87,
            "alert": None,
        }
    ]
    fire = {"event": "alert", "task": "classify", "name": "Fire", "confidence": 0.87, "frames": K}
    assert alerts == [
        dict(fire, frame=2, timestamp=0.2, merged=0, position=None),
        dict(fire, name="Flood", frame=10, timestamp=1.0, merged=0, position=None),
        dict(fire, frame=6, timestamp=0.6, merged=0, position=None),  # held, sent at close
    ]
    assert logs == [
        f"mqtt: 3 alerts and 1 frame summaries published to 127.0.0.1:{broker} (1 held by the "
        "rate limit, 0 merged), 0 not published"
    ]


def test_the_position_a_mavlink_sink_wrote_rides_along(broker):
    mavutil = pytest.importorskip("pymavlink.mavutil", reason="pip install 'glimmer-edge[mavlink]'")
    from glimmer.runtime.stream.mavlink import MavlinkSettings, MavlinkSink

    link = mavutil.mavlink_connection("udpin:127.0.0.1:0", source_system=1, source_component=1)
    mav_sink = MavlinkSink(
        MavlinkSettings(connect=f"udpout:127.0.0.1:{link.port.getsockname()[1]}"),
        log=lambda line: None,
    )
    sub = Subscriber(broker, ["glimmer/alerts"])
    mqtt_sink = MqttSink(MqttSettings(host="127.0.0.1", port=broker), log=lambda line: None)
    try:
        # the vehicle answers on the same link once the sink's heartbeat told it where we are
        assert link.recv_match(type="HEARTBEAT", blocking=True, timeout=10) is not None
        deadline = time.monotonic() + 10
        while mav_sink.position() is None and time.monotonic() < deadline:
            link.mav.global_position_int_send(
                0, -337000000, 1512000000, 50000, 30000, 0, 0, 0, 18000
            )
            time.sleep(0.02)
        for result in frames([FIRE] * K):
            for sink in (mav_sink, mqtt_sink):  # MAVLink first: it writes the position
                sink.write(result)
    finally:
        mav_sink.close()
        mqtt_sink.close()
        link.close()
    (message,) = sub.wait(1)
    sub.close()
    position = message["payload"]["position"]
    assert (position["lat"], position["lon"], position["alt_m"]) == (-33.7, 151.2, 50.0)
    assert (position["relative_alt_m"], position["heading"]) == (30.0, 180.0)
    assert position["age_s"] >= 0.0


def test_a_broker_that_is_not_there_is_one_line():
    port = free_port()  # nothing listens here
    with pytest.raises(GlimmerError) as info:
        MqttSink(MqttSettings(host="127.0.0.1", port=port), log=lambda line: None)
    assert str(info.value) == (
        f"[outputs.mqtt] broker 127.0.0.1:{port}: cannot connect: Connection refused"
    )


def test_refused_credentials_are_one_line_and_good_ones_connect(tmp_path):
    if broker_binary() is None:
        pytest.skip(f"no MQTT broker: apt-get install -y {APT_PACKAGE}")
    with running_broker(tmp_path, users={"drone": "s3cret"}) as port:
        settings = MqttSettings(host="127.0.0.1", port=port, username="drone", password="wrong")
        with pytest.raises(GlimmerError) as info:
            MqttSink(settings, log=lambda line: None)
        assert str(info.value) == (
            f"[outputs.mqtt] broker 127.0.0.1:{port}: connection refused: Not authorized"
        )
        good = MqttSink(
            MqttSettings(host="127.0.0.1", port=port, username="drone", password="s3cret"),
            log=lambda line: None,
        )
        for result in frames([FIRE] * K):
            good.write(result)
        good.close()
        assert good.stats == {"alerts": 1, "frames": 0, "dropped": 0}


@pytest.mark.parametrize(
    "table, message",
    [
        ({"topc": "a/b"}, "[outputs.mqtt] unknown key 'topc' (did you mean 'topic'?)"),
        ({"qos": 3}, "[outputs.mqtt] key 'qos' must be at most 2, got 3"),
        ({"port": "1883"}, "[outputs.mqtt] key 'port' must be an integer, got string '1883'"),
        (
            {"topic": "glimmer/#"},
            "[outputs.mqtt] key 'topic' must be a topic name without wildcards (+ #), got "
            "'glimmer/#'",
        ),
    ],
)
def test_bad_tables_are_one_line_naming_the_key(table, message):
    with pytest.raises(GlimmerError) as info:
        MqttSettings.from_table(table, "deploy.toml")
    assert str(info.value) == f"deploy.toml: {message}"


def test_tls_ca_is_relative_to_the_profile_and_must_exist(tmp_path):
    profile = tmp_path / "deploy.toml"
    profile.write_text("")
    settings = MqttSettings.from_table({"tls_ca": "certs/ca.pem", "port": 8883}, str(profile))
    assert settings.tls_ca == str(tmp_path / "certs" / "ca.pem")
    with pytest.raises(GlimmerError) as info:
        MqttSink(settings, log=lambda line: None)
    assert str(info.value) == f"[outputs.mqtt] tls_ca {tmp_path / 'certs' / 'ca.pem'}: no such file"


def test_without_paho_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "paho" or m.startswith("paho.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "paho", None)
    with pytest.raises(GlimmerError) as info:
        MqttSink(MqttSettings(), log=lambda line: None)
    assert str(info.value) == "[outputs.mqtt] needs paho-mqtt: pip install 'glimmer-edge[mqtt]'"
