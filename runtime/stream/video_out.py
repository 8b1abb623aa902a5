"""Output URIs in jetson-inference's ``videoOutput`` vocabulary, for ``--save``.

    my_video.mp4, file://my_video.mp4   an annotated video file (VideoSink: atomic, read back)
    display://0                         a window (DisplaySink)
    rtp://HOST:PORT                     H.264 over RTP/UDP to HOST (a viewer, or a multicast group)
    rtsp://SERVER:PORT/PATH             H.264 published to an RTSP server (e.g. mediamtx)

Network outputs go through ``cv2.VideoWriter`` with a GStreamer pipeline (``appsrc ! ... !
udpsink``), so they need an OpenCV built with GStreamer: JetPack's, or Debian/Ubuntu's
``python3-opencv``; PyPI's wheels are built without it and get one line saying so. On a Jetson
the hardware encoder (``nvv4l2h264enc``) encodes, elsewhere ``x264enc``, tuned for latency.

jetson-inference serves RTSP itself (``rtsp://@:8554/path``) through gst-rtsp-server; an OpenCV
writer can only feed a pipeline, not host a server, so here ``rtsp://`` publishes to a server that
runs beside (``rtspclientsink``), and ``rtsp://@...`` says so instead of failing later.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.stream.capture import gstreamer_available, redact
from glimmer.runtime.stream.sinks import (
    FOURCC,
    DisplaySink,
    FrameResult,
    Sink,
    VideoSink,
    annotate,
    display_available,
)

#: where L4T says it is a Jetson (what glimmer-doctor reads too)
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
#: H.264 bit rate of network outputs (a 720p stream a drone link carries)
BITRATE_KBPS = 4000
#: one key frame a second at 30 FPS: a viewer that joins late waits at most that long
KEY_INTERVAL = 30
ACCEPTED = (
    "a video file (PATH or file://PATH, {}), display://0, rtp://HOST:PORT, "
    "rtsp://SERVER:PORT/PATH".format(", ".join(sorted(FOURCC)))
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_HOST_PORT = re.compile(r"^(\[[^\]]+\]|[^:/@\[\]]*)(?::(\d*))?$")


@dataclass(frozen=True)
class OutputURI:
    """A parsed ``--save`` value: ``scheme`` is file, display, rtp or rtsp."""

    scheme: str
    uri: str
    path: Optional[Path] = None  # file
    host: str = ""  # rtp, rtsp
    port: Optional[int] = None  # rtp, rtsp (None: the protocol's default)
    display: int = 0  # display


def _host_port(uri: str, netloc: str, flag: str, port_needed: bool) -> Tuple[str, Optional[int]]:
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    found = _HOST_PORT.match(netloc)
    if not found or not found.group(1):
        raise GlimmerError(
            f"{flag} {redact(uri)}: expected a host, as in {uri.split(':')[0]}://HOST:PORT"
        )
    host, port = found.group(1).strip("[]"), found.group(2)
    if port is None or port == "":
        if port_needed:
            raise GlimmerError(f"{flag} {redact(uri)}: needs a port, as in rtp://{host}:5000")
        return host, None
    number = int(port)
    if not 0 < number < 65536:
        raise GlimmerError(f"{flag} {redact(uri)}: port {number} is outside 1-65535")
    return host, number


def parse_output_uri(uri: str, flag: str = "--save") -> OutputURI:
    """``uri`` as an :class:`OutputURI`; anything else is one line naming the accepted forms."""
    text = str(uri).strip()
    if not text:
        raise GlimmerError(f"{flag}: empty; give {ACCEPTED}")
    found = _SCHEME.match(text)
    if not found:
        return OutputURI("file", text, path=Path(text))
    scheme, rest = found.group(1).lower(), found.group(2)
    if scheme == "file":
        if not rest:
            raise GlimmerError(f"{flag} {text}: file:// needs a path, as in file://run.mp4")
        return OutputURI("file", text, path=Path(rest))
    if scheme == "display":
        if not rest.isdigit():
            raise GlimmerError(f"{flag} {text}: expected display://0")
        if int(rest) != 0:
            raise GlimmerError(
                f"{flag} {text}: only display://0 (OpenCV opens its windows on the default display)"
            )
        return OutputURI("display", text, display=0)
    if scheme == "rtp":
        netloc = rest.split("/", 1)[0]
        if netloc.startswith("@"):
            raise GlimmerError(
                f"{flag} {text}: RTP is sent to a receiver: give its address, rtp://HOST:PORT"
            )
        host, port = _host_port(text, netloc, flag, port_needed=True)
        return OutputURI("rtp", text, host=host, port=port)
    if scheme == "rtsp":
        netloc = rest.split("/", 1)[0]
        if netloc.startswith("@") or netloc.startswith(":") or not netloc:
            raise GlimmerError(
                f"{flag} {redact(text)}: serving RTSP from glimmer-run (jetson-inference's "
                "rtsp://@:PORT) needs gst-rtsp-server, which an OpenCV writer cannot host; "
                "publish to an RTSP server running beside it (e.g. mediamtx) with "
                "rtsp://SERVER:8554/PATH, or send rtp://HOST:PORT"
            )
        host, port = _host_port(text, netloc, flag, port_needed=False)
        return OutputURI("rtsp", text, host=host, port=port)
    raise GlimmerError(f"{flag} {redact(text)}: unknown output scheme {scheme!r}; give {ACCEPTED}")


def on_jetson() -> bool:
    """Whether this is a Jetson (L4T), whose GStreamer has the hardware H.264 encoder."""
    return NV_TEGRA_RELEASE.is_file()


def encoder_chain(jetson: bool, bitrate_kbps: int = BITRATE_KBPS) -> str:
    """appsrc's BGR frames -> H.264: the Jetson's hardware encoder, else x264 tuned for latency."""
    if jetson:
        return (
            "videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! "
            "video/x-raw(memory:NVMM),format=NV12 ! "
            f"nvv4l2h264enc bitrate={bitrate_kbps * 1000} insert-sps-pps=true "
            f"idrinterval={KEY_INTERVAL} ! h264parse"
        )
    return (
        "videoconvert ! video/x-raw,format=I420 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast bitrate={bitrate_kbps} "
        f"key-int-max={KEY_INTERVAL} ! video/x-h264,profile=baseline ! h264parse"
    )


def gstreamer_pipeline(target: OutputURI, jetson: bool) -> str:
    """The ``cv2.VideoWriter`` pipeline for an rtp or rtsp output."""
    head = f"appsrc is-live=true ! {encoder_chain(jetson)}"
    if target.scheme == "rtp":
        return (
            f"{head} ! rtph264pay config-interval=1 pt=96 ! "
            f"udpsink host={target.host} port={target.port} sync=false async=false"
        )
    if target.scheme == "rtsp":
        return f"{head} ! rtspclientsink location={target.uri} protocols=tcp latency=0"
    raise ValueError(f"no GStreamer pipeline for a {target.scheme} output")


#: what each network output needs installed, for the line said when its writer cannot open
_NEEDS = {
    "rtp": "x264enc (gstreamer1.0-plugins-ugly), rtph264pay and udpsink "
    "(gstreamer1.0-plugins-good)",
    "rtsp": "x264enc (gstreamer1.0-plugins-ugly) and rtspclientsink (gstreamer1.0-rtsp), and the "
    "RTSP server must be reachable",
}


class GStreamerSink(Sink):
    """Annotated frames into a GStreamer pipeline through ``cv2.VideoWriter``; the writer opens on
    the first frame, when the size is known."""

    needs_frames = True

    def __init__(self, target: OutputURI, fps: float, flag: str = "--save", jetson: bool = False):
        self.target = target
        self.flag = flag
        self.fps = fps if fps and fps > 0 else 30.0
        self.pipeline = gstreamer_pipeline(target, jetson)
        self.jetson = jetson
        self._writer: Any = None
        self.frames = 0

    def _open(self, width: int, height: int) -> Any:
        from glimmer.runtime.core.preprocess import _cv2

        cv2 = _cv2()
        writer = cv2.VideoWriter(self.pipeline, cv2.CAP_GSTREAMER, 0, self.fps, (width, height))
        if not writer.isOpened():
            needs = (
                "nvv4l2h264enc (JetPack's GStreamer)" if self.jetson else _NEEDS[self.target.scheme]
            )
            raise GlimmerError(
                f"{self.flag} {redact(self.target.uri)}: GStreamer could not open the "
                f"{self.target.scheme.upper()} pipeline ({width}x{height} at {self.fps:g} FPS); it "
                f"needs {needs}"
            )
        return writer

    def write(self, result: FrameResult) -> None:
        if result.frame is None:
            return
        image = annotate(result.frame, result.prediction, result.fps)
        if self._writer is None:
            self._writer = self._open(image.shape[1], image.shape[0])
        self._writer.write(image)
        self.frames += 1

    def close(self, complete: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def check_video_output(uri: str, flag: str = "--save") -> OutputURI:
    """``uri`` parsed, and refused when this machine cannot write it (no display, no GStreamer):
    checked before a model load or an engine build, not after."""
    target = parse_output_uri(uri, flag)
    if target.scheme == "display":
        reason = display_available()
        if reason:
            raise GlimmerError(f"{flag} {uri}: {reason}")
    elif target.scheme != "file" and not gstreamer_available():
        raise GlimmerError(
            f"{flag} {redact(target.uri)}: this OpenCV has no GStreamer, which {target.scheme}:// "
            "output needs (PyPI's opencv-python wheels are built without it): use JetPack's "
            "OpenCV on a Jetson, or Debian/Ubuntu's python3-opencv, or save to a file"
        )
    return target


def open_video_output(uri: str, fps: float, flag: str = "--save") -> Sink:
    """The sink for ``uri`` (see the module's table); every problem known before the first frame
    is one line naming ``flag`` and the URI (:func:`check_video_output`)."""
    target = check_video_output(uri, flag)
    if target.scheme == "file":
        assert target.path is not None
        return VideoSink(target.path, fps, flag)
    if target.scheme == "display":
        return DisplaySink()
    return GStreamerSink(target, fps, flag, jetson=on_jetson())
