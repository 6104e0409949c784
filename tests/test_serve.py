"""runtime/serve: a real server process on loopback, a video file as its camera, real HTTP."""

import contextlib
import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest
from conftest import REPO

from edgeconv.benchmarks.server import Server
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.hotswap import HotModel

PHOTO = REPO / "devices" / "selftest" / "cat.jpg"


@pytest.fixture(scope="module")
def video(real_data, tmp_path_factory) -> Path:
    """20 frames at 320x240, cats then dogs, 10 frames a second."""
    path = tmp_path_factory.mktemp("serve-video") / "pets.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for index in range(20):
        kind = "cats/cat" if index < 10 else "dogs/dog"
        frame = cv2.imread(str(real_data / "test" / f"{kind}.{1501 + index}.jpg"))
        writer.write(cv2.resize(frame, (320, 240)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def server(shipped, video, tmp_path_factory):
    model = tmp_path_factory.mktemp("serve-model") / "current.tflite"
    shutil.copy(shipped / "plus_int8.tflite", model)
    running = Server(model, "--camera", video, "--max-body", "1")
    running.model = model
    yield running
    log = running.stop()
    assert "Traceback" not in log, log


def wait_for(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_api_classifies_raw_and_multipart_bodies_like_the_python_api(server, shipped):
    expected = Classifier(shipped / "plus_int8.tflite").predict(PHOTO)
    status, raw = server.json("/api/classify", data=PHOTO.read_bytes())
    assert status == 200 and raw["label"] == expected.label
    assert raw["scores"] == pytest.approx(expected.scores) and raw["ms"] > 0
    boundary = "edgeconvtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"cat.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + \
        PHOTO.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, form = server.json("/api/classify", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and form["scores"] == raw["scores"]


def test_bad_requests_get_json_errors_and_no_traceback(server):
    status, answer = server.json("/api/classify", data=b"<html>not a photo</html>")
    assert status == 400 and answer["error"] == "not an image"
    status, answer = server.json("/api/classify", data=PHOTO.read_bytes()[:300])
    assert status == 400 and "corrupt or truncated" in answer["error"]
    status, answer = server.json("/nope")
    assert status == 404 and "no route /nope" in answer["error"]
    status, headers, _ = server.request("/api/classify")  # GET on a POST route
    assert status == 405 and headers["Allow"] == "POST"
    status, answer = server.json("/healthz", data=b"x", method="DELETE")
    assert status == 405


def test_malformed_requests_get_one_line_json_errors_and_never_a_traceback(server):
    def answers(data: bytes, reset: bool = False) -> bytes:
        """Everything the server sends back on one connection after `data`."""
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(data)
            if reset:  # leave mid-request with a reset: nothing to answer, nothing to log
                time.sleep(0.2)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                return b""
            received = b""
            # A refusal sent before the body was read may end in a reset: read what came first.
            with contextlib.suppress(ConnectionResetError):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    received += chunk
            return received

    photo = PHOTO.read_bytes()
    host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
    for request, status, error in (
            (b"POST /api/classify HTTP/1.1\r\n" + host + b"Content-Length: -5\r\n\r\n" + photo,
             400, "bad Content-Length"),
            (b"POST /api/classify HTTP/1.1\r\n" + host + b"Transfer-Encoding: gzip\r\n"
             b"Content-Length: " + str(len(photo)).encode() + b"\r\n\r\n" + photo, 501,
             "Only Transfer-Encoding: chunked is supported"),
            (b"GET /healthz HTTP/1.1\r\n" + host + b"X: y\r\n" * 101 + b"\r\n", 431,
             "request head over 100 lines or 32768 bytes"),
            (b"GET /healthz HTTP/1.1\r\n" + host + b"X: " + b"y" * 40000 + b"\r\n\r\n", 431,
             "request head over 100 lines or 32768 bytes"),
            (b"GARBAGE\r\n\r\n", 400, "illegal request line"),
            (b"GET http://[ HTTP/1.1\r\n\r\n", 400, "Missing mandatory Host: header")):
        head, _, body = answers(request).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert b"content-type: application/json" in head.lower(), head
        assert error in json.loads(body)["error"] and body.count(b"\n") == 1
    # A body nobody reads is not taken for the next request: one answer.
    smuggled = answers(b"GET /healthz HTTP/1.1\r\n" + host + b"Content-Length: 22\r\n\r\n"
                       b"GET /nope HTTP/1.1\r\n\r\n")
    assert smuggled.count(b"HTTP/1.1 ") == 1, smuggled
    answers(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", reset=True)  # the log is read at the end
    for path in ("/made-up-1", "/made-up-2"):
        server.request(path)
    metrics = server.request("/metrics")[2].decode()
    assert 'route="other",code="404"' in metrics and "made-up" not in metrics


def test_an_oversized_body_is_refused_before_it_is_read(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/api/classify")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(50_000_000))  # over the 1 MB limit set
    connection.endheaders()  # and not one byte of the body is sent
    response = connection.getresponse()
    assert response.status == 413 and "over the 1000000-byte limit" in response.read().decode()
    connection.close()


def test_page_info_metrics_events_and_stream(server):
    status, headers, page = server.request("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/stream.mjpg" in page and b"EventSource" in page
    assert b"http://" not in page and b"https://" not in page  # no external assets
    assert wait_for(lambda: server.json("/api/info")[1]["frames"] >= 3)
    status, info = server.json("/api/info")
    assert info["camera"] and info["engine"] == "litert" and info["p50_ms"] > 0
    assert info["metadata"]["labels"] == ["cats", "dogs"]

    with urllib.request.urlopen(server.url + "/events", timeout=10) as events:
        lines = [events.readline() for _ in range(6)]
    data = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    assert data and {"frame", "label", "score", "scores", "ms", "fps"} <= set(data[0])

    with urllib.request.urlopen(server.url + "/stream.mjpg", timeout=10) as stream:
        assert "multipart/x-mixed-replace" in stream.headers["Content-Type"]
        head = stream.read(200_000)
    assert head.startswith(b"--frame\r\nContent-Type: image/jpeg")
    first = head.index(b"\xff\xd8")
    jpeg = head[first:head.index(b"\xff\xd9", first) + 2]
    assert cv2.imdecode(__import__("numpy").frombuffer(jpeg, "uint8"), 1).shape == (240, 320, 3)

    _, _, metrics = server.request("/metrics")
    text = metrics.decode()
    frames = int(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("edgeconv_frames_total")))
    assert frames >= 3 and 'edgeconv_inference_ms_bucket{le="+Inf"}' in text
    assert 'edgeconv_requests_total{route="/api/info",code="200"}' in text


def test_a_stalled_client_blocks_neither_the_camera_nor_other_clients(server):
    host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"POST /api/classify HTTP/1.1\r\n" + host + b"Content-Type: image/jpeg"
                    b"\r\nContent-Length: 5000\r\n\r\nabc")
    viewer = socket.create_connection(("127.0.0.1", server.port))
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    viewer.sendall(b"GET /stream.mjpg HTTP/1.1\r\n" + host + b"\r\n")  # and never read
    try:
        before = server.json("/api/info")[1]["frames"]
        started = time.monotonic()
        assert server.json("/healthz")[0] == 200
        assert time.monotonic() - started < 2
        assert wait_for(lambda: server.json("/api/info")[1]["frames"] >= before + 10)
    finally:
        stalled.close()
        viewer.close()


def test_a_replaced_model_is_swapped_in_and_a_broken_one_refused(server, shipped, tmp_path):
    def replace_with(data: bytes):
        incoming = server.model.with_name(".incoming.tflite")
        incoming.write_bytes(data)
        os.replace(incoming, server.model)  # as deploy does

    events = urllib.request.urlopen(server.url + "/events", timeout=20)
    before = server.json("/api/info")[1]
    replace_with(b"TFL3 but not a model at all")
    assert wait_for(lambda: server.json("/api/info")[1]["model_refused"] == 1)
    status, still = server.json("/api/classify", data=PHOTO.read_bytes())
    assert status == 200 and server.json("/api/info")[1]["model_swaps"] == 0
    assert still["scores"] == pytest.approx(
        Classifier(shipped / "plus_int8.tflite").predict(PHOTO).scores)

    replace_with((shipped / "augmented_int8.tflite").read_bytes())
    assert wait_for(lambda: server.json("/api/info")[1]["model_swaps"] == 1)
    after = server.json("/api/info")[1]
    assert after["metadata"]["source_model"]["sha256"] != \
        before["metadata"]["source_model"]["sha256"]
    expected = Classifier(shipped / "augmented_int8.tflite").predict(PHOTO)
    assert server.json("/api/classify", data=PHOTO.read_bytes())[1]["scores"] == \
        pytest.approx(expected.scores)
    lines = [events.readline() for _ in range(8)]  # the viewer connected before still reads
    assert any(line.startswith(b"data: ") for line in lines)
    events.close()


def test_another_address_needs_a_token_kept_with_0600(shipped, tmp_path):
    token_file = tmp_path / "config" / "token"
    running = Server(shipped / "plus_int8.tflite", "--host", "0.0.0.0", "--token-file",
                     token_file)
    try:
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 24
        assert running.json("/healthz")[0] == 200  # open, for probes
        status, answer = running.json("/api/info")
        assert status == 401 and "token required" in answer["error"]
        assert running.request("/", headers={"Authorization": "Bearer wrong"})[0] == 401
        for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive
            status, _ = running.json("/api/info", headers={"Authorization": f"{scheme} {token}"})
            assert status == 200
        assert running.request(f"/api/info?token={token}")[0] == 401  # the page's only
        assert running.request("/api/info", headers={"Cookie": "edgeconv_token="})[0] == 401
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        connection.request("GET", f"/?token={token}")
        response = connection.getresponse()
        response.read()
        assert response.status == 303 and response.getheader("Location") == "/"
        cookie = response.getheader("Set-Cookie").split(";")[0]
        assert "HttpOnly" in response.getheader("Set-Cookie")
        assert running.request("/", headers={"Cookie": cookie})[0] == 200
        other_apps = f'=x; a,b="c; {cookie}; theme=dark'  # localhost cookies of any port
        assert running.request("/", headers={"Cookie": other_apps})[0] == 200
        assert running.request("/stream.mjpg", headers={"Cookie": cookie})[0] == 404  # no camera
    finally:
        log = running.stop()
    assert f"token: a new one is in {token_file} (mode 0600)" in log and token not in log
    assert not list(token_file.parent.glob(".*tmp"))  # written to a temporary name, renamed


def test_usage_errors_are_one_line(shipped, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"nope")
    model = shipped / "plus_int8.tflite"
    empty = tmp_path / "empty-token"
    empty.write_text("\n")  # as a start on a full disk once left it
    for args, message in (([bad], "error: "), ([model, "--port", "0"], "--port must be 1-65535"),
                          ([model, "--token", ""], "error: --token is empty"),
                          ([model, "--token", "  "], "error: --token is empty"),
                          ([model, "--host", "0.0.0.0", "--token-file", empty],
                           f"error: token file {empty} (delete it for a new one) is empty")):
        result = subprocess.run([sys.executable, str(REPO / "runtime" / "serve"),
                                 *map(str, args)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr
        if "--port" not in args:
            assert result.stderr.count("\n") == 1, result.stderr


def test_hot_model_refuses_a_broken_file_and_swaps_a_good_one(shipped, tmp_path):
    path = tmp_path / "current.tflite"
    shutil.copy(shipped / "plus_int8.tflite", path)
    logged = []
    hot = HotModel(path, Classifier, interval=0, log=logged.append)
    first = hot.classifier
    assert not hot.poll()  # unchanged
    path.write_bytes((shipped / "plus_int8.tflite").read_bytes()[:1000])
    assert not hot.poll() and hot.classifier is first and hot.refused == 1
    assert "new file refused" in logged[-1]
    shutil.copy(shipped / "augmented_int8.tflite", tmp_path / "next.tflite")
    os.replace(tmp_path / "next.tflite", path)
    assert hot.poll() and hot.classifier is not first and hot.swaps == 1
    assert "swapped in" in logged[-1]


@pytest.mark.system
def test_chromium_shows_the_live_label(server):
    from browser import Browser

    browser = Browser(server.url + "/")
    try:
        label = browser.wait_for("document.getElementById('stream') && "
                                 "document.getElementById('label').textContent !== '-' && "
                                 "document.getElementById('label').textContent")
        shown = browser.evaluate("document.getElementById('score').textContent")
        model = browser.evaluate("document.getElementById('model').textContent")
        frame_width = browser.wait_for("document.getElementById('stream').naturalWidth")
    finally:
        browser.close()
    recent = server.json("/api/history")[1]["predictions"]  # the last 2 s of frames
    assert label in {p["label"] for p in recent}
    assert any(shown == "  ".join(f"{name} {score:.2f}" for name, score in sorted(
        p["scores"].items(), key=lambda item: -item[1])) for p in recent), shown
    assert "current.tflite" in model and "litert" in model
    assert frame_width == 320  # the MJPEG stream is showing


@pytest.mark.slow
def test_load_benchmark_prints_its_figures(shipped, real_data):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve.py"), shipped / "plus_int8.tflite",
         real_data / "test" / "cats", "--clients", "2", "--requests", "30", "--viewers", "2",
         "--seconds", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| serve POST /api/classify, 2 clients |" in result.stdout
    assert "0 failed requests" in result.stdout
    ratio = float(result.stdout.split("with 2 viewers: ")[1].split("x")[0])
    alone = float(result.stdout.split("| no viewer | ")[1].split(" |")[0])
    watched = float(result.stdout.split("| 2 MJPEG viewers | ")[1].split(" |")[0])
    assert alone > 0 and ratio == pytest.approx(watched / alone, abs=0.02)


def raw_answer(port: int, data: bytes, timeout: float = 20) -> tuple[int | None, bytes]:
    """(status or None, whole reply) of one request sent as bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and b"content-length" not in received.lower():
                    break
    words = received.split(None, 2)
    return (int(words[1]) if len(words) > 1 and words[1].isdigit() else None), received


def test_only_its_own_names_and_pages_are_served(server):
    """DNS rebinding (a foreign Host) and requests from pages on other sites are refused on
    every route, and the API takes image types or a form only; none of it is counted as done."""
    def classified() -> int:
        metrics = server.request("/metrics")[2].decode()
        return sum(int(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith('edgeconv_requests_total{route="/api/classify",code="200"'))

    before = classified()
    photo = PHOTO.read_bytes()
    for host in ("attacker.example", f"attacker.example:{server.port}", "127.0.0.1",
                 f"127.0.0.1:{server.port + 1}", f"localhost.attacker.example:{server.port}"):
        for path in ("/stream.mjpg", "/api/info", "/api/history", "/events", "/metrics", "/"):
            status, answer = server.json(path, headers={"Host": host})
            assert status == 421 and "does not answer to Host" in answer["error"], (host, path)
        assert server.json("/api/classify", data=photo, headers={"Host": host})[0] == 421
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        assert server.json("/api/info", headers={"Host": host})[0] == 200
    assert server.json("/api/info", headers={"Host": f"[::1]:{server.port}"})[0] == 200
    for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                    {"Origin": f"http://localhost:{server.port + 1}"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        for content_type in ("image/jpeg", "text/plain", "multipart/form-data; boundary=x"):
            status, answer = server.json("/api/classify", data=photo, headers={
                **headers, "Content-Type": content_type})
            assert status == 403 and "another site" in answer["error"], headers
        assert server.request("/stream.mjpg", headers=headers)[0] == 403
    own = {"Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"}
    assert server.json("/api/classify", data=photo, headers=own)[0] == 200
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        status, answer = server.json("/api/classify", data=photo,
                                     headers={"Content-Type": content_type})
        assert status == 415 and "not an image" in answer["error"]
    navigation = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                  "Sec-Fetch-Dest": "document"}  # a link to the page from elsewhere
    assert server.request("/", headers=navigation)[0] == 200
    assert server.request("/api/info", headers=navigation)[0] == 403
    assert classified() == before + 1  # only the same-origin one


def test_a_non_loopback_server_answers_its_address_and_allowed_names(shipped):
    running = Server(shipped / "plus_int8.tflite", "--host", "0.0.0.0", "--token", "t0ken",
                     "--allow-host", "pi.local", "--allow-host", "camera.lan")
    bearer = {"Authorization": "Bearer t0ken"}
    try:
        for host, status in ((f"pi.local:{running.port}", 200), (f"camera.lan:{running.port}",
                                                                   200),
                             (f"127.0.0.1:{running.port}", 200), (f"other.lan:{running.port}",
                                                                  421),
                             ("pi.local", 421), (f"pi.local:{running.port}0", 421),
                             (f"{socket.gethostname().split('.')[0]}.local:{running.port}",
                              200)):
            assert running.request("/api/info", headers={**bearer, "Host": host})[0] == status
    finally:
        log = running.stop()
    assert "t0ken" not in log


def encoded(image, fmt: str, **options) -> bytes:
    from PIL import Image  # noqa: F401  (Pillow images come in)

    buffer = __import__("io").BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_decoding_bombs_four_at_a_time_are_refused_in_little_memory(shipped):
    """16-bit, RGBA and 32-bit TIFF images of 8000x8000 (a few hundred KB each) and a JPEG of
    2,000 scans: refused before decoding, the server's peak memory stays under 300 MB."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    bombs = {"image/png": encoded(Image.new("I;16", (8000, 8000), 40000), "PNG"),
             "image/webp": encoded(Image.new("RGBA", (8000, 8000)), "PNG"),
             "image/tiff": encoded(Image.new("I", (8000, 8000)), "TIFF",
                                   compression="tiff_deflate")}
    progressive = encoded(Image.open(PHOTO), "JPEG", progressive=True)
    scans = progressive[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * 2000 + b"\xff\xd9"
    running = Server(shipped / "plus_int8.tflite")
    try:
        def post(item) -> tuple[int, dict]:
            content_type, body = item
            return running.json("/api/classify", data=body,
                                headers={"Content-Type": content_type})

        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                for status, answer in pool.map(post, [*bombs.items(), ("image/jpeg", scans)]):
                    assert status == 400, answer
                    assert "MB to decode" in answer["error"] or "2010 scans" in answer["error"]
        peak = float(Path(f"/proc/{running.process.pid}/status").read_text().split(
            "VmHWM:")[1].split()[0]) / 1024
        assert peak < 300, peak
        assert running.json("/api/classify", data=PHOTO.read_bytes())[0] == 200
    finally:
        log = running.stop()
    assert "Traceback" not in log


def test_multipart_nesting_and_part_counts_are_bounded(server):
    boundary = "b0"
    nested = b""
    for depth in range(1000, 0, -1):  # 1,000 forms, each the 'file' of the one around it
        nested = (f"--b{depth}\r\nContent-Disposition: form-data; name=\"file\"\r\n"
                  f"Content-Type: multipart/form-data; boundary=b{depth + 1}\r\n\r\n").encode() \
            + nested + f"\r\n--b{depth}--\r\n".encode()
    flat = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"n{n}\"\r\n\r\nx\r\n"
                    .encode() for n in range(10000)) + f"--{boundary}--\r\n".encode()
    started = time.monotonic()
    status, answer = server.json("/api/classify", data=nested, headers={
        "Content-Type": "multipart/form-data; boundary=b1"})
    assert status == 400 and answer["error"] == "not an image"  # depth one: a part's bytes
    status, answer = server.json("/api/classify", data=flat, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and answer["error"] == "multipart form of over 64 parts"
    assert time.monotonic() - started < 5


def test_slow_clients_are_dropped_and_healthz_answers_meanwhile(shipped):
    """120 clients sending a header line every half second against a cap of 40 connections
    and a 2 s head deadline; a slow body is cut at its 3 s deadline with 408."""
    running = Server(shipped / "plus_int8.tflite", "--max-connections", "40",
                     "--head-timeout", "2", "--body-timeout", "3")
    slow = []
    try:
        host = f"Host: 127.0.0.1:{running.port}\r\n".encode()
        for _ in range(120):
            sock = socket.create_connection(("127.0.0.1", running.port))
            sock.sendall(b"GET /api/info HTTP/1.1\r\n")
            slow.append(sock)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
            started = time.monotonic()
            assert running.json("/healthz")[0] == 200
            assert time.monotonic() - started < 1
            time.sleep(0.5)
        open_ones = 0
        for sock in slow:  # dropped: at the cap, or at the head deadline
            sock.settimeout(0.5)
            try:
                open_ones += sock.recv(1) != b""
            except TimeoutError:
                open_ones += 1
            except OSError:
                pass
        assert open_ones == 0
        started = time.monotonic()
        status, reply = raw_answer(running.port, b"POST /api/classify HTTP/1.1\r\n" + host +
                                   b"Content-Type: image/jpeg\r\nContent-Length: 9000\r\n\r\n"
                                   b"only part of it")
        assert status == 408 and b"did not arrive within 3 s" in reply
        assert 2.5 < time.monotonic() - started < 6
    finally:
        for sock in slow:
            sock.close()
        log = running.stop()
    assert "Traceback" not in log


def test_a_model_overwritten_in_place_or_made_a_fifo_or_dev_zero_never_stops_it(shipped, tmp_path):
    model = tmp_path / "current.tflite"
    shutil.copy(shipped / "plus_int8.tflite", model)
    running = Server(model)
    try:
        for source in ("augmented_int8.tflite", "plus_int8.tflite", "augmented_int8.tflite"):
            shutil.copyfile(shipped / source, model)  # cp: the same inode, rewritten
            for _ in range(5):
                assert running.json("/api/classify", data=PHOTO.read_bytes())[0] == 200
                time.sleep(0.3)
        assert wait_for(lambda: running.json("/api/info")[1]["model_swaps"] >= 2)
        refused = running.json("/api/info")[1]["model_refused"]
        model.unlink()
        os.mkfifo(model)
        assert wait_for(lambda: running.json("/api/info")[1]["model_refused"] == refused + 1)
        assert running.json("/api/classify", data=PHOTO.read_bytes())[0] == 200
        model.unlink()
        model.symlink_to("/dev/zero")
        assert wait_for(lambda: running.json("/api/info")[1]["model_refused"] == refused + 2)
        model.unlink()
        shutil.copy(shipped / "plus_int8.tflite", model)  # the watcher lives on
        swaps = running.json("/api/info")[1]["model_swaps"]
        assert wait_for(lambda: running.json("/api/info")[1]["model_swaps"] == swaps + 1)
        metrics = running.request("/metrics")[2].decode()
        assert f"edgeconv_model_refused_total {refused + 2}" in metrics
    finally:
        log = running.stop()
    assert running.process.returncode == -15 or running.process.returncode == 0, log
    assert "Traceback" not in log and "not a regular file" in log


def test_healthz_says_503_when_the_camera_stalls(shipped, tmp_path):
    """The camera is a FIFO that delivers 40 frames and then nothing, as a hung camera."""
    import threading

    import numpy as np
    from PIL import Image

    camera = tmp_path / "camera.mjpg"
    os.mkfifo(camera)
    frame = encoded(Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (480, 640, 3), dtype=np.uint8)), "JPEG", quality=95)
    held = threading.Event()

    def deliver() -> None:
        with open(camera, "wb") as fifo:
            for _ in range(40):
                fifo.write(frame)
            fifo.flush()
            held.wait(60)

    threading.Thread(target=deliver, daemon=True).start()
    running = Server(shipped / "plus_int8.tflite", "--camera", camera)
    try:
        assert wait_for(lambda: running.json("/api/info")[1]["frames"] >= 20)
        assert wait_for(lambda: running.json("/healthz")[0] == 503, timeout=15)
        status, answer = running.json("/healthz")
        assert answer["status"] == "stale" and "last frame is" in answer["error"]
    finally:
        held.set()
        running.stop()


ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>elsewhere</title>
<img id="camera"><form id="form" method="post" enctype="multipart/form-data" target="sink"
 action="TARGET/api/classify"><input name="file" value="not a file"></form>
<iframe name="sink"></iframe>
<script>
const target = "TARGET";
const photo = Uint8Array.from(atob("PHOTO"), c => c.charCodeAt(0));
const form = new FormData();
form.append("file", new Blob([photo], {type: "image/jpeg"}), "cat.jpg");
const tries = [
  fetch(target + "/api/classify", {method: "POST", mode: "no-cors",
                                   body: new Blob([photo], {type: "text/plain"})}),
  fetch(target + "/api/classify", {method: "POST", mode: "no-cors", body: form}),
  fetch(target + "/api/classify", {method: "POST", mode: "no-cors", body: photo}),
  fetch(target + "/api/history", {mode: "no-cors"}),
];
document.getElementById("camera").src = target + "/stream.mjpg";
const events = new EventSource(target + "/events");
document.getElementById("form").submit();
Promise.allSettled(tries).then(() => setTimeout(() => { document.title = "done"; }, 2000));
</script>"""


@pytest.mark.system
def test_a_page_on_another_site_can_neither_classify_nor_watch(server):
    """A page from another origin in Chromium: no-cors fetches of an image (text/plain,
    multipart, raw), a form post, the camera in an <img>, an EventSource. All arrive; none is
    served (/metrics), and the server's own page still works (the test above)."""
    import base64
    import http.server
    import threading

    from browser import Browser

    page = ATTACK_PAGE.replace("TARGET", server.url).replace(
        "PHOTO", base64.b64encode(PHOTO.read_bytes()).decode()).encode()

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (the base's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    def counts() -> dict[tuple[str, str], int]:
        metrics = server.request("/metrics")[2].decode()
        found = {}
        for line in metrics.splitlines():
            if line.startswith("edgeconv_requests_total{"):
                route = line.split('route="')[1].split('"')[0]
                code = line.split('code="')[1].split('"')[0]
                found[route, code] = int(line.split()[-1])
        return found

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    before = counts()
    browser = Browser(f"http://127.0.0.1:{elsewhere.server_address[1]}/")
    try:
        browser.wait_for("document.title === 'done'")
    finally:
        browser.close()
        elsewhere.shutdown()
    after = counts()
    grew = {key: after[key] - before.get(key, 0) for key in after
            if after[key] != before.get(key, 0) and key[0] != "/metrics"}
    assert all(code == "403" for _, code in grew), grew  # nothing done, nothing read
    assert grew.get(("/api/classify", "403"), 0) >= 4, grew  # 3 fetches and the form
    assert grew.get(("/stream.mjpg", "403"), 0) >= 1 and grew.get(("/events", "403"), 0) >= 1


@pytest.fixture(scope="module")
def negatives_server(shipped, negatives, tmp_path_factory):
    """The shipped plus model serving a video of 20 photos of neither class: source folders
    its none head only checked on, never trained or set its cut on."""
    folders = Classifier(shipped / "plus_int8.tflite").metadata["confidence"]["none"][
        "check_folders"]
    photos = [path for folder in folders for path in sorted((negatives / folder).iterdir())[:5]]
    path = tmp_path_factory.mktemp("serve-negatives") / "negatives.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (320, 240)))
    writer.release()
    running = Server(shipped / "plus_int8.tflite", "--camera", path)
    yield running
    log = running.stop()
    assert "Traceback" not in log, log


def test_chromium_shows_none_plainly_on_a_video_of_negatives(negatives_server):
    from browser import Browser

    browser = Browser(negatives_server.url + "/")
    try:
        shown = browser.wait_for("document.getElementById('stream') && "
                                 "document.getElementById('label').className === 'label none' "
                                 "&& [document.getElementById('label').textContent, "
                                 "document.getElementById('note').textContent]")
    finally:
        browser.close()
    assert shown[0] == "none" and shown[1].startswith("none of these classes (P(none) ")
    with urllib.request.urlopen(negatives_server.url + "/events", timeout=10) as events:
        lines = [events.readline() for _ in range(75)]  # a loop of the 20 frames and more
    data = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    assert len(data) >= 20 and all("none" in event for event in data)
    assert any(event["label"] == "none" and event["none"] >= 0.5 for event in data)
    _, _, metrics = negatives_server.request("/metrics")
    counts = {line.split('"')[1]: int(line.split()[-1]) for line in metrics.decode().splitlines()
              if line.startswith("edgeconv_answers_total{")}
    assert set(counts) == {"class", "none", "unsure"}
    assert counts["none"] > 0
