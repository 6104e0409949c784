"""Start runtime/serve on MODEL, POST PHOTO to /api/classify, print the answer as one JSON line.

  python tests/serve_check.py MODEL PHOTO

Copied into the emulated Pis (tests/test_emulated_pi.py), which have neither curl nor pytest.
"""

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

model, photo = sys.argv[1], sys.argv[2]
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
url = f"http://127.0.0.1:{port}"
with tempfile.TemporaryFile() as log:
    server = subprocess.Popen([sys.executable, "runtime/serve", model, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 900  # emulated, a start takes minutes
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=10):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    sys.exit(f"serve did not start: {log.read().decode()[-2000:]}")
                time.sleep(1)
        with open(photo, "rb") as file:
            request = urllib.request.Request(url + "/api/classify", data=file.read(),
                                             headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=300) as response:
            print(json.dumps(json.loads(response.read())))
    finally:
        server.terminate()
        server.wait(timeout=60)
