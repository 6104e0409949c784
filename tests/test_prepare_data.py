"""train/prepare_data.py on generated Kaggle and PetImages sources, and the download."""

import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest
from conftest import run_script
from PIL import Image

from train.download import DownloadError, download

SPLIT_ARGS = ["--train", "3", "--validation", "2", "--test", "1"]


def jpeg(colour=(120, 80, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (32, 24), colour if mode == "RGB" else 128).save(buffer, "JPEG")
    return buffer.getvalue()


def bad_files() -> dict[str, bytes]:
    """What the real PetImages download holds besides good photos."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    return {
        "2": b"",  # zero bytes
        "4": jpeg()[:300],  # truncated
        "5": b"this is not an image",
        "7": png.getvalue(),  # a PNG named .jpg
    }


def kaggle_files() -> dict[str, bytes]:
    files = {}
    for animal in ("cat", "dog"):
        for number in range(1, 11):
            files[f"{animal}.{number}.jpg"] = jpeg()
        for number, data in bad_files().items():
            files[f"{animal}.{number}.jpg"] = data
    files["cat.3.jpg"] = jpeg(mode="L")  # grayscale is a usable photo
    files["Thumbs.db"] = b"junk"
    return files


def petimages_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for animal in ("Cat", "Dog"):
            files = {str(number): jpeg() for number in range(0, 10)} | bad_files()
            for number, data in files.items():
                archive.writestr(f"PetImages/{animal}/{number}.jpg", data)
        archive.writestr("MSR-LA - 3467.docx", b"licence")
    return buffer.getvalue()


def layout(root):
    return {
        split: {cls: sorted(p.name for p in (root / split / cls).iterdir())
                for cls in ("cats", "dogs")}
        for split in ("train", "validation", "test")
    }


def test_kaggle_folder_admits_only_good_images_in_index_order(tmp_path):
    source = tmp_path / "kaggle"
    source.mkdir()
    for name, data in kaggle_files().items():
        (source / name).write_bytes(data)
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--source", source, "--out", out, *SPLIT_ARGS)
    assert result.returncode == 0, result.stderr
    assert layout(out)["train"]["cats"] == ["cat.1.jpg", "cat.3.jpg", "cat.6.jpg"]
    assert layout(out)["validation"]["dogs"] == ["dog.8.jpg", "dog.9.jpg"]
    assert layout(out)["test"]["dogs"] == ["dog.10.jpg"]
    assert (out / "train/cats/cat.1.jpg").read_bytes() == (source / "cat.1.jpg").read_bytes()
    skipped = json.loads((out / "prepare.json").read_text())["skipped"]
    assert skipped == {"corrupt or truncated": 2, "empty file": 2, "misnamed": 2,
                       "not an image": 2, "unrecognised name": 1}
    assert "skipped: 2 corrupt or truncated" in result.stdout


def test_petimages_zip_becomes_the_same_layout(tmp_path):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(petimages_zip())
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--source", archive, "--out", out, *SPLIT_ARGS)
    assert result.returncode == 0, result.stderr
    assert layout(out)["train"]["dogs"] == ["dog.0.jpg", "dog.1.jpg", "dog.3.jpg"]
    assert layout(out)["test"]["cats"] == ["cat.9.jpg"]


def test_too_few_good_images_and_existing_output_are_one_line_errors(tmp_path):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(petimages_zip())
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--source", archive, "--out", out,
                        "--train", "9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "usable" in result.stderr and not out.exists()
    assert not list(tmp_path.glob(".small*")), "staging folder left behind"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_script("train/prepare_data.py", "--source", archive, "--out", out)
    assert result.returncode == 2 and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves one in-memory file on 127.0.0.1, honouring Range requests."""

    def __init__(self, payload: bytes):
        self.payload, self.ranges = payload, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                start = 0
                header = handler.headers.get("Range")
                self.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(self.payload):
                        handler.send_response(416)
                        handler.end_headers()
                        return
                    handler.send_response(206)
                    handler.send_header("Content-Range",
                                        f"bytes {start}-{len(self.payload) - 1}/{len(payload)}")
                else:
                    handler.send_response(200)
                handler.send_header("Content-Length", str(len(self.payload) - start))
                handler.end_headers()
                handler.wfile.write(self.payload[start:])

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/kagglecatsanddogs.zip"


@pytest.fixture
def server():
    with RangeServer(petimages_zip()) as running:
        yield running
        running.shutdown()


def test_download_resumes_a_partial_file_and_checks_size_and_sha(tmp_path, server):
    payload = server.payload
    dest = tmp_path / "pets.zip"
    (tmp_path / "pets.zip.part").write_bytes(payload[: len(payload) // 2])
    download(server.url, dest, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert server.ranges == [f"bytes={len(payload) // 2}-"]
    assert not (tmp_path / "pets.zip.part").exists()
    download(server.url, dest, size=len(payload))  # already there and whole: no request
    assert len(server.ranges) == 1


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, server):
    dest = tmp_path / "pets.zip"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download(server.url, dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "pets.zip.part").exists()


def test_download_to_a_closed_port_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="cannot connect"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", timeout=5)


def test_prepare_with_download_end_to_end(tmp_path, server):
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--download", "--url", server.url,
                        "--size", len(server.payload), "--downloads", tmp_path / "dl",
                        "--out", out, *SPLIT_ARGS)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dl" / "kagglecatsanddogs.zip").stat().st_size == len(server.payload)
    assert sum(len(v) for split in layout(out).values() for v in split.values()) == 12
