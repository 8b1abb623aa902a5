"""Alerts (and, if asked, per-frame summaries) as JSON to an MQTT broker: a :class:`Sink`.

The same alert starts and per-class rate limit as the MAVLink sink (:mod:`.mavlink`), published to
``topic`` as one JSON object each::

    {"event": "alert", "task": "classify", "name": "Fire", "confidence": 0.97, "frames": 5,
     "frame": 412, "timestamp": 13.7, "merged": 0, "position": {...} | null}

``position`` is there when a MAVLink sink runs before this one. With ``frames_interval_s`` > 0, a
summary of the newest frame goes to ``frames_topic`` at most that often (label and score, or the
box count; the active alert; FPS and latency).

paho-mqtt's network thread does the sending: ``write`` only queues (``publish`` returns at once),
and a bounded queue keeps memory flat while the broker is away; paho reconnects by itself. The
first connection is made when the sink is created, so a wrong host, port, CA or password fails
before the first frame, as one line. ``pip install 'glimmer-edge[mqtt]'``.
"""

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.settings import Key
from glimmer.runtime.stream.alerts import AlertTracker, RateLimiter, check_table
from glimmer.runtime.stream.sinks import FrameResult, Sink

SECTION = "outputs.mqtt"


@dataclass
class MqttSettings:
    """``[outputs.mqtt]`` of deploy.toml.

    Attributes:
        host, port: the broker.
        topic: where alerts go.
        qos: MQTT quality of service, 0, 1 or 2 (1: at least once, resent after a reconnect).
        client_id: the session's name at the broker; empty: a random one (paho).
        username, password: credentials, when the broker wants them.
        tls_ca: a CA certificate file: connect with TLS, checking the broker against it.
        min_interval_s: per class, the least time between two alert messages.
        frames_topic: where per-frame summaries go.
        frames_interval_s: seconds between two summaries; 0: none.
        keepalive_s: MQTT keep-alive (the broker drops a client silent this long).
        connect_timeout_s: how long the first connection may take.
    """

    host: str = "localhost"
    port: int = 1883
    topic: str = "glimmer/alerts"
    qos: int = 1
    client_id: str = ""
    username: Optional[str] = None
    password: Optional[str] = None
    tls_ca: Optional[str] = None
    min_interval_s: float = 1.0
    frames_topic: str = "glimmer/frames"
    frames_interval_s: float = 0.0
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0

    KEYS = {
        "host": Key("str"),
        "port": Key("int", minimum=1, maximum=65535),
        "topic": Key("str"),
        "qos": Key("int", minimum=0, maximum=2),
        "client_id": Key("str"),
        "username": Key("str"),
        "password": Key("str"),
        "tls_ca": Key("str"),
        "min_interval_s": Key("float", minimum=0.0),
        "frames_topic": Key("str"),
        "frames_interval_s": Key("float", minimum=0.0),
        "keepalive_s": Key("int", minimum=5),
        "connect_timeout_s": Key("float", minimum=0.1),
    }

    @classmethod
    def from_table(cls, table: Dict[str, Any], origin: str) -> "MqttSettings":
        """Validated settings; ``tls_ca`` relative to the file's folder, like deploy.toml's
        paths."""
        values = check_table(table, SECTION, cls.KEYS, origin)
        for topic in ("topic", "frames_topic"):
            if topic in values and (not values[topic] or any(c in values[topic] for c in "+#")):
                raise GlimmerError(
                    f"{origin}: [{SECTION}] key {topic!r} must be a topic name without wildcards "
                    f"(+ #), got {values[topic]!r}"
                )
        if "tls_ca" in values and not os.path.isabs(os.path.expanduser(values["tls_ca"])):
            base = os.path.dirname(os.path.abspath(origin)) if os.path.isfile(origin) else "."
            values["tls_ca"] = os.path.join(base, values["tls_ca"])
        return cls(**values)


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise GlimmerError(
            f"[{SECTION}] needs paho-mqtt: pip install 'glimmer-edge[mqtt]'"
        ) from None
    return mqtt


def summary(result: FrameResult) -> Dict[str, Any]:
    """A frame in a few fields: what a dashboard shows between alerts."""
    pred = result.prediction
    out: Dict[str, Any] = {
        "event": "frame",
        "task": pred.get("task"),
        "frame": result.index,
        "timestamp": round(result.timestamp, 6),
        "fps": round(result.fps, 2),
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
    }
    if pred.get("task") == "detect":
        out["count"] = pred.get("count", 0)
    else:
        out["name"], out["confidence"] = pred.get("name"), pred.get("confidence")
        alert = pred.get("alert")
        out["alert"] = alert["name"] if isinstance(alert, dict) else None
    return out


class MqttSink(Sink):
    """Alerts and summaries as JSON to a broker, sent by paho's network thread."""

    def __init__(
        self,
        settings: MqttSettings,
        log: Optional[Callable[[str], None]] = None,
        max_queued: int = 1000,
    ) -> None:
        self.settings = settings
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.stats = {"alerts": 0, "frames": 0, "dropped": 0}
        self._tracker = AlertTracker()
        self.limiter = RateLimiter(settings.min_interval_s)
        self._last_summary = -1e9
        self._reported = False
        self._closed = False
        self._unacked: List[Any] = []
        mqtt = _paho()
        self._mqtt = mqtt
        where = f"[{SECTION}] broker {settings.host}:{settings.port}"
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id)
        else:  # 1.x
            client = mqtt.Client(client_id=settings.client_id)
        client.max_queued_messages_set(max_queued)
        client.reconnect_delay_set(1, 30)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls_ca is not None:
            if not os.path.isfile(settings.tls_ca):
                raise GlimmerError(f"[{SECTION}] tls_ca {settings.tls_ca}: no such file")
            try:
                client.tls_set(ca_certs=settings.tls_ca)
            except Exception as exc:  # ssl.SSLError: an unreadable or malformed certificate
                raise GlimmerError(f"[{SECTION}] tls_ca {settings.tls_ca}: {exc}") from None
        connected = threading.Event()
        self._refusal: Optional[str] = None

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, *rest: Any) -> None:
            failed = reason.is_failure if hasattr(reason, "is_failure") else reason != 0
            if failed:
                text = str(reason) if hasattr(reason, "is_failure") else mqtt.connack_string(reason)
                self._refusal = text
            connected.set()

        client.on_connect = on_connect
        try:
            client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise GlimmerError(f"{where}: cannot connect: {reason}") from None
        client.loop_start()
        if not connected.wait(settings.connect_timeout_s) or self._refusal:
            client.loop_stop()
            client.disconnect()
            why = self._refusal or f"no answer within {settings.connect_timeout_s:g} s"
            raise GlimmerError(f"{where}: connection refused: {why}")
        self._client = client

    def write(self, result: FrameResult) -> None:
        now = time.monotonic()
        ready = self.limiter.due(now)
        for event in self._tracker.events(result):
            ready.extend(self.limiter.offer(event, now))
        for event, merged in ready:
            record = dict(event="alert", **event.as_dict(merged))
            self._publish(self.settings.topic, record, "alerts")
        interval = self.settings.frames_interval_s
        if interval > 0 and now - self._last_summary >= interval:
            self._last_summary = now
            self._publish(self.settings.frames_topic, summary(result), "frames")

    def _publish(self, topic: str, record: Dict[str, Any], stat: str) -> None:
        info = self._client.publish(topic, json.dumps(record), qos=self.settings.qos)
        if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
            self.stats[stat] += 1
            self._unacked = [i for i in self._unacked if not i.is_published()] + [info]
            return
        self.stats["dropped"] += 1
        if not self._reported:  # reported once; the run goes on, the count grows
            self._reported = True
            self.log(
                f"mqtt: publishing to {self.settings.host}:{self.settings.port} failed "
                f"({self._mqtt.error_string(info.rc)}); further failures are counted"
            )

    def close(self, complete: bool = True) -> None:
        """Publish what the rate limit holds, give the queue a moment to drain, disconnect."""
        if self._closed:
            return
        self._closed = True
        for event, merged in self.limiter.drain():
            record = dict(event="alert", **event.as_dict(merged))
            self._publish(self.settings.topic, record, "alerts")
        deadline = time.monotonic() + 5.0  # QoS 1 and 2: until the broker has them
        while any(not i.is_published() for i in self._unacked) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._client.disconnect()
        self._client.loop_stop()
        s = self.stats
        self.log(
            f"mqtt: {s['alerts']} alerts and {s['frames']} frame summaries published to "
            f"{self.settings.host}:{self.settings.port} ({self.limiter.held} held by the rate "
            f"limit, {self.limiter.merged} merged), {s['dropped']} not published"
        )
