"""A TCP server on 127.0.0.1 that accepts connections and never answers: what a camera whose
network stack is up and whose streaming service hangs looks like to a client (RTSP, HTTP)."""

import socket
import threading
from typing import List


class SilentServer:
    """``with SilentServer() as server:`` listens on ``server.port``; ``server.accepted`` is set
    at the first connection (so a test knows its client is now inside the open), and every
    connection stays open, unanswered, until the server is closed."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.accepted = threading.Event()
        self.connections: List[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self._thread.start()

    def url(self, scheme: str = "rtsp", path: str = "/cam") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections.append(conn)  # held, never read from or written to
            self.accepted.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        for conn in self.connections:
            conn.close()
        self._sock.close()

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
