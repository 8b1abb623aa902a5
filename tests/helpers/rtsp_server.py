"""A real RTSP camera for the live-source tests: GStreamer's RTSP server (gst-rtsp-server) streaming
a moving test pattern as RTP/JPEG (or H.264) on 127.0.0.1.

Run by Debian's system Python, which python3-gi belongs to (the project's virtual environments
have no GObject bindings):

    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 [--path /cam] [--codec jpeg|h264]

It prints ``READY rtsp://127.0.0.1:PORT/PATH`` on stdout once it listens, and runs until killed.
Without the system packages it prints ``MISSING <reason>`` and exits 3, so a test can skip with the
reason instead of guessing. Packages (Debian bookworm): python3-gi gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-base gstreamer1.0-plugins-good (jpegenc, rtpjpegpay), and
gstreamer1.0-plugins-ugly for ``--codec h264`` (x264enc).

Deliberately no imports from the project: this file runs outside its environment.
"""

import argparse
import sys

MISSING_EXIT = 3
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly"
)
# What each codec needs, besides videotestsrc / videoconvert (plugins-base).
CODEC_ELEMENTS = {"jpeg": ("jpegenc", "rtpjpegpay"), "h264": ("x264enc", "rtph264pay")}


def launch_line(codec: str, width: int, height: int, fps: int) -> str:
    """The media pipeline; ``is-live`` so frames come at ``fps`` in real time, as a camera's do."""
    source = (
        f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! videoconvert"
    )
    if codec == "h264":
        # zerolatency: no B-frames or lookahead; a key frame each second: reconnects resume fast
        encode = (
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! "
            "rtph264pay name=pay0 pt=96 config-interval=1"
        )
    else:
        # rtpjpegpay (RFC 2435) carries only 4:2:0 / 4:2:2 baseline JPEG: ask jpegenc for I420
        encode = "video/x-raw,format=I420 ! jpegenc quality=70 ! rtpjpegpay name=pay0 pt=26"
    return f"( {source} ! {encode} )"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--codec", choices=sorted(CODEC_ELEMENTS), default="jpeg")
    args = parser.parse_args(argv)
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        print(f"MISSING GStreamer RTSP server bindings ({exc})", flush=True)
        return MISSING_EXIT
    Gst.init(None)
    absent = [name for name in CODEC_ELEMENTS[args.codec] if Gst.ElementFactory.find(name) is None]
    if absent:
        print(f"MISSING GStreamer elements {', '.join(absent)}", flush=True)
        return MISSING_EXIT

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.codec, args.width, args.height, args.fps))
    factory.set_shared(True)  # one pipeline for every client, as a camera has
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"FAILED could not listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
