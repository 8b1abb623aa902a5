"""A real MQTT broker for tests: Debian's mosquitto on a free loopback port with a temp config,
and a real paho subscriber that collects what it receives."""

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

APT_PACKAGE = "mosquitto"


def broker_binary() -> Optional[str]:
    """mosquitto's path, or None (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _password_file(folder: Path, users: Dict[str, str]) -> Path:
    path = folder / "passwords"
    path.write_text("")
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    return path


@contextlib.contextmanager
def running_broker(folder: Path, users: Optional[Dict[str, str]] = None) -> Iterator[int]:
    """mosquitto listening on 127.0.0.1 (its port is yielded), anonymous unless ``users`` (name ->
    password) is given; stopped (and waited for) on exit."""
    binary = broker_binary()
    assert binary, f"mosquitto is not installed (apt-get install -y {APT_PACKAGE})"
    port = free_port()
    # as root, mosquitto would switch to its own user, which cannot read a test's temp folder
    user = pwd.getpwuid(os.geteuid()).pw_name
    lines = [f"listener {port} 127.0.0.1", "persistence false", "log_dest stderr", f"user {user}"]
    if users:
        lines += ["allow_anonymous false", f"password_file {_password_file(folder, users)}"]
    else:
        lines.append("allow_anonymous true")
    config = folder / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    log = open(str(folder / "mosquitto.log"), "wb")
    proc = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15.0
        while True:
            assert proc.poll() is None, (folder / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen within 15 s"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Subscriber:
    """A paho client subscribed to ``topics``; ``wait(n)`` blocks until n messages arrived."""

    def __init__(self, port: int, topics: List[str]) -> None:
        import paho.mqtt.client as mqtt

        self.messages: List[Dict[str, Any]] = []  # {"topic", "payload" (parsed JSON), "qos"}
        self._cond = threading.Condition()
        subscribed = threading.Event()
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
        else:
            self.client = mqtt.Client(client_id="test-sub")
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *args: client.subscribe([(t, 1) for t in topics])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10.0), "the test subscriber was not subscribed within 10 s"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append(
                {"topic": msg.topic, "payload": json.loads(msg.payload.decode()), "qos": msg.qos}
            )
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
