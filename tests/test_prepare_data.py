"""train/prepare_data.py on generated class folders, Kaggle and PetImages sources, and the
download."""

import csv
import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest
from conftest import run_script
from PIL import Image

from edgeconv.train.dataset import dataset_digest, find_dataset
from edgeconv.train.download import DownloadError, download
from edgeconv.train.split import assign, split_sizes

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
    assert "skipped 1 (unrecognised name): Thumbs.db" in result.stderr


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


def class_folders(root, per_class=None) -> dict:
    """Your own photos: class folders of distinct JPEGs, plus the mess a real folder holds."""
    per_class = per_class or {"apple": 12, "kiwi": 9, "pear": 10}
    for index, (name, count) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for number in range(count):
            (root / name / f"IMG_{number:03d}.jpg").write_bytes(jpeg((40 * index, 3 * number, 90)))
    return per_class


def own_layout(root) -> dict:
    return {split: {cls.name: sorted(p.name for p in cls.iterdir())
                    for cls in sorted((root / split).iterdir())}
            for split in ("train", "validation", "test")}


def test_class_folders_split_per_class_by_fraction_the_same_every_time(tmp_path):
    source = tmp_path / "photos"
    counts = class_folders(source)
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        result = run_script("train/prepare_data.py", "--source", source, "--out", out,
                            "--train", "0.5", "--validation", "0.25", "--test", "0.25")
        assert result.returncode == 0, result.stderr
        runs.append(own_layout(out))
    assert runs[0] == runs[1]
    for name, count in counts.items():
        sizes = [len(runs[0][split][name]) for split in ("train", "validation", "test")]
        assert sum(sizes) == count  # fractions adding up to 1 place every photo
        assert sizes[1] == sizes[2] == round(count / 4)
        placed = [photo for split in runs[0].values() for photo in split[name]]
        assert sorted(placed) == sorted(p.name for p in (source / name).iterdir())
    other_seed = tmp_path / "c"
    run_script("train/prepare_data.py", "--source", source, "--out", other_seed, "--seed", "1",
               "--train", "0.5", "--validation", "0.25", "--test", "0.25")
    assert own_layout(other_seed) != runs[0]
    manifest = list(csv.DictReader((tmp_path / "a" / "manifest.csv").read_text().splitlines()))
    assert len(manifest) == sum(counts.values())
    for row in manifest[:5]:
        data = (tmp_path / "a" / row["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert row["file"].startswith(f"{row['split']}/{row['class']}/")
    summary = json.loads((tmp_path / "a" / "prepare.json").read_text())
    assert summary["data_sha256"] == dataset_digest(find_dataset(tmp_path / "a"))


def test_counts_per_class_duplicates_bad_files_and_links(tmp_path):
    source = tmp_path / "photos"
    class_folders(source)
    for copy, original in (("kiwi/copy of IMG_001.jpg", "kiwi/IMG_001.jpg"),
                           ("pear/IMG_900.jpg", "apple/IMG_002.jpg")):
        (source / copy).write_bytes((source / original).read_bytes())
    for name, data in bad_files().items():
        (source / "apple" / f"bad_{name}.jpg").write_bytes(data)
    (source / "notes.txt").write_text("taken in May")
    (source / "kiwi" / ".DS_Store").write_bytes(b"junk")
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--source", source, "--out", out,
                        "--train", "5", "--validation", "2", "--test", "2", "--link", "symlink")
    assert result.returncode == 0, result.stderr
    layout = own_layout(out)
    assert {name: len(files) for name, files in layout["train"].items()} == {
        "apple": 5, "kiwi": 5, "pear": 5}
    assert all(len(files) == 2 for files in layout["test"].values())
    every = [f for split in layout.values() for files in split.values() for f in files]
    assert "copy of IMG_001.jpg" not in every and "IMG_900.jpg" not in every
    assert "apple/IMG_002.jpg" in result.stderr and "pear/IMG_900.jpg" in result.stderr
    assert "copy of IMG_001.jpg: same bytes as kiwi/IMG_001.jpg" in result.stderr
    for name in ("bad_2.jpg: empty file", "bad_4.jpg: corrupt or truncated",
                 "bad_5.jpg: not an image", "notes.txt"):
        assert name in result.stderr, name
    assert "bad_7.jpg" not in result.stderr  # a PNG named .jpg is still a photo
    photo = next((out / "train" / "pear").iterdir())
    assert photo.is_symlink() and photo.resolve().parent == (source / "pear").resolve()
    skipped = json.loads((out / "prepare.json").read_text())["skipped"]
    assert skipped["duplicate"] == 1 and skipped["in two classes"] == 1
    assert skipped["not in a class folder"] == 1 and skipped["hidden file"] == 1


def test_a_class_with_too_few_photos_is_a_one_line_error_naming_it(tmp_path):
    source = tmp_path / "photos"
    class_folders(source, {"apple": 12, "kiwi": 3, "pear": 10})
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--source", source, "--out", out)
    assert result.returncode == 2 and not out.exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "'kiwi' has 3 usable photos" in last
    result = run_script("train/prepare_data.py", "--source", source, "--out", out,
                        "--train", "3", "--validation", "1", "--test", "1")
    assert result.returncode == 2 and "'kiwi'" in result.stderr and "apple" not in result.stderr
    assert not list(tmp_path.glob(".small*")), "staging folder left behind"


@pytest.mark.parametrize("sizes, photos", [({"train": 0.7, "validation": 0.15, "test": 0.15}, 41),
                                           ({"train": 10, "validation": 3, "test": 0.1}, 30)])
def test_split_sizes_add_up(sizes, photos):
    counts = split_sizes(photos, sizes)
    assert sum(counts.values()) <= photos and min(counts.values()) >= 1
    chosen = assign({"a": [f"{n:04d}" for n in range(photos)]}, sizes, seed=3)["a"]
    assert [len(chosen[split]) for split in ("train", "validation", "test")] == [
        counts["train"], counts["validation"], counts["test"]]
    assert len({key for keys in chosen.values() for key in keys}) == sum(counts.values())
    shuffled = assign({"a": [f"{n:04d}" for n in reversed(range(photos))]}, sizes, seed=3)
    assert shuffled["a"] == chosen  # the order photos are listed in does not matter


def test_a_zipped_folder_of_label_n_files_splits_by_label(tmp_path):
    archive = tmp_path / "fruit.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for index, label in enumerate(("apple", "kiwi")):
            for number in range(1, 7):
                zipped.writestr(f"fruit/{label}.{number}.jpg", jpeg((90 * index, 9 * number, 0)))
        zipped.writestr("fruit/notes.2024.txt", b"not a photo")
    out = tmp_path / "small"
    result = run_script("train/prepare_data.py", "--source", archive, "--out", out,
                        "--train", "4", "--validation", "1", "--test", "1")
    assert result.returncode == 0, result.stderr
    layout = own_layout(out)
    assert {name: len(files) for name, files in layout["train"].items()} == {"apple": 4,
                                                                             "kiwi": 4}
    assert all(name.startswith("kiwi.") for name in layout["test"]["kiwi"])
    assert "fruit/notes.2024.txt" in result.stderr
