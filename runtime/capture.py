"""Keep the camera frames the model was unsure of, on the device, to label and learn from.

A frame is kept when its calibrated score is under `below`, or its answer is "none" or
"unsure", at most `per_minute` a minute, and not when it looks like one already kept (a
difference hash, dHash, within `distance` bits). Each is a JPEG (at most STORED_WIDTH wide)
with a JSON sidecar: time, device, model file and SHA-256, answer and scores; a label, once
given on the label page, goes in the sidecar too. The folder holds at most `keep` frames and
`max_bytes`: to make room the oldest frame already exported goes first, then the oldest
unlabelled one; a labelled frame stays until it has been exported (when nothing can go, the
new frame is not kept). Files are written under a temporary name and renamed: a frame
without its sidecar is never listed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from edgeconv.runtime.classifier import Prediction
from edgeconv.runtime.confidence import NONE
from edgeconv.runtime.evaluate import UNSURE

STORED_WIDTH = 640  # frames are shrunk to this width: enough to label, and to train at 150
QUALITY = 90
FRAME_ID = re.compile(r"\d{8}T\d{6}-\d{3}-[0-9a-f]{16}(-\d+)?")  # time-ms-dhash[-n]
MANIFEST = "manifest.json"


class CaptureError(ValueError):
    """A label or frame the capture folder cannot take: one line for the client."""


@dataclass(frozen=True)
class CaptureRules:
    folder: Path
    below: float = 0.8  # a frame whose calibrated score is under this is kept
    per_minute: int = 6
    keep: int = 500  # frames in the folder at most
    max_bytes: int = 100 * 2**20
    distance: int = 6  # dHash bits: a frame this close to a kept one is a near-duplicate


def dhash(frame: np.ndarray | Image.Image) -> int:
    """A 64-bit difference hash: the frame in 9x8 grey, one bit per pair of neighbours."""
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def now_iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Frame:
    """One kept frame, as its sidecar describes it."""

    id: str
    hash: int
    bytes: int
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        return self.info.get("label")

    @property
    def exported(self) -> bool:
        return bool(self.info.get("exported"))


class Capture:
    """The capture folder: keeps frames (offer), labels them (label), packs them (export)."""

    def __init__(self, rules: CaptureRules, device: str | None = None):
        self.rules = rules
        self.device = device or socket.gethostname()
        self.lock = threading.Lock()
        self.recent: deque[float] = deque()  # monotonic times of the last minute's saves
        self.counts = dict.fromkeys(("saved", "duplicate", "rate", "full", "dropped", "errors"),
                                    0)
        rules.folder.mkdir(parents=True, exist_ok=True)
        self.frames: dict[str, Frame] = {}  # oldest first
        self._load()

    # --- the folder ------------------------------------------------------------------------

    def _load(self) -> None:
        """Index the folder: sidecars with their JPEG; what a stopped process left half
        written (a temporary file, a JPEG without sidecar) is removed."""
        folder = self.rules.folder
        for path in folder.glob(".*.partial"):
            path.unlink(missing_ok=True)
        for sidecar in sorted(folder.glob("*.json")):
            jpeg = sidecar.with_suffix(".jpg")
            if not FRAME_ID.fullmatch(sidecar.stem) or not jpeg.is_file():
                continue
            try:
                info = json.loads(sidecar.read_text())
                self.frames[sidecar.stem] = Frame(sidecar.stem, int(info["dhash"], 16),
                                                  jpeg.stat().st_size + sidecar.stat().st_size,
                                                  info)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not one of ours: left alone
        for jpeg in folder.glob("*.jpg"):
            if FRAME_ID.fullmatch(jpeg.stem) and jpeg.stem not in self.frames:
                jpeg.unlink(missing_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError:
            partial.unlink(missing_ok=True)
            raise

    def _rewrite(self, frame: Frame, info: dict) -> None:
        """A new sidecar for `frame` (its label or export), in place of the old one."""
        sidecar = json.dumps(info, indent=1).encode() + b"\n"
        path = self.rules.folder / f"{frame.id}.json"
        old = path.stat().st_size
        self._write(path, sidecar)
        frame.info, frame.bytes = info, frame.bytes - old + len(sidecar)

    def _remove(self, frame: Frame) -> None:
        for suffix in (".json", ".jpg"):  # the sidecar first: a JPEG alone is never listed
            (self.rules.folder / f"{frame.id}{suffix}").unlink(missing_ok=True)
        del self.frames[frame.id]

    def usage(self) -> dict:
        with self.lock:
            frames = list(self.frames.values())
        return {"files": 2 * len(frames), "frames": len(frames),
                "bytes": sum(frame.bytes for frame in frames),
                "labelled": sum(frame.label is not None for frame in frames),
                "exported": sum(frame.exported for frame in frames),
                "keep": self.rules.keep, "max_bytes": self.rules.max_bytes, **self.counts}

    # --- keeping frames --------------------------------------------------------------------

    def wanted(self, prediction: Prediction) -> bool:
        return prediction.label in (NONE, UNSURE) or prediction.score < self.rules.below

    def offer(self, frame: np.ndarray, prediction: Prediction, model: Path,
              model_sha256: str, at: float | None = None) -> str | None:
        """Keep `frame` if the rules say so; its id, or None."""
        if not self.wanted(prediction):
            return None
        at = time.time() if at is None else at
        clock = time.monotonic()
        with self.lock:
            while self.recent and clock - self.recent[0] >= 60:
                self.recent.popleft()
            if len(self.recent) >= self.rules.per_minute:
                self.counts["rate"] += 1
                return None
        image = Image.fromarray(frame)
        code = dhash(image)
        with self.lock:
            if self._near(code):
                self.counts["duplicate"] += 1
                return None
        if image.width > STORED_WIDTH:
            image = image.resize((STORED_WIDTH, round(image.height * STORED_WIDTH / image.width)),
                                 Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=QUALITY)
        jpeg = buffer.getvalue()
        info = {"time": now_iso(at), "device": self.device, "model": model.name,
                "model_sha256": model_sha256, "answer": prediction.label,
                "guess": prediction.guess, "score": round(prediction.score, 6),
                "scores": prediction.scores, "none": prediction.none, "dhash": f"{code:016x}",
                "width": image.width, "height": image.height, "label": None,
                "labelled": None, "exported": None}
        sidecar = json.dumps(info, indent=1).encode() + b"\n"
        with self.lock:
            if not self._make_room(len(jpeg) + len(sidecar)):
                self.counts["full"] += 1
                return None
            stamp = datetime.fromtimestamp(at, timezone.utc)
            frame_id = f"{stamp:%Y%m%dT%H%M%S}-{stamp.microsecond // 1000:03d}-{code:016x}"
            base, n = frame_id, 1
            while frame_id in self.frames:
                frame_id, n = f"{base}-{n}", n + 1
            try:
                self._write(self.rules.folder / f"{frame_id}.jpg", jpeg)
                self._write(self.rules.folder / f"{frame_id}.json", sidecar)
            except OSError:  # a full disk: no JPEG left without its sidecar
                (self.rules.folder / f"{frame_id}.jpg").unlink(missing_ok=True)
                raise
            self.frames[frame_id] = Frame(frame_id, code, len(jpeg) + len(sidecar), info)
            self.recent.append(clock)
            self.counts["saved"] += 1
        return frame_id

    def keep(self, frame: np.ndarray, prediction: Prediction, model,
             log: Callable[[str], None]) -> None:
        """offer() for the camera loops, from a HotModel (its path and SHA-256): a full or
        failing disk is one log line and never stops the camera."""
        try:
            self.offer(frame, prediction, model.path, model.sha256)
        except OSError as error:
            if not self.counts["errors"]:  # once, not at every frame
                log(f"capture {self.rules.folder}: cannot write ({error.strerror or error}); "
                    "frames are not kept")
            self.counts["errors"] += 1

    def _near(self, code: int) -> bool:
        if not self.frames:
            return False
        hashes = np.fromiter((frame.hash for frame in self.frames.values()), np.uint64,
                             len(self.frames))
        differ = np.unpackbits((hashes ^ np.uint64(code)).view(np.uint8)).reshape(-1, 64)
        return bool((differ.sum(axis=1) <= self.rules.distance).any())

    def _make_room(self, size: int) -> bool:
        """Drop frames (exported first, then unlabelled, oldest first) until one of `size`
        bytes fits; False when only labelled frames not yet exported are left."""
        used = sum(frame.bytes for frame in self.frames.values())
        while len(self.frames) >= self.rules.keep or used + size > self.rules.max_bytes:
            droppable = [frame for frame in self.frames.values() if frame.exported] or [
                frame for frame in self.frames.values() if frame.label is None]
            if not droppable:
                return False
            used -= droppable[0].bytes
            self._remove(droppable[0])
            self.counts["dropped"] += 1
        return True

    # --- labelling and export --------------------------------------------------------------

    def listing(self) -> list[dict]:
        """Every kept frame, oldest first: id, time, answer, score, label."""
        with self.lock:
            frames = list(self.frames.values())
        return [{"id": frame.id, "time": frame.info["time"], "answer": frame.info["answer"],
                 "guess": frame.info["guess"], "score": frame.info["score"],
                 "label": frame.label, "exported": frame.exported} for frame in frames]

    def jpeg(self, frame_id: str) -> bytes:
        with self.lock:
            if frame_id not in self.frames:
                raise CaptureError(f"no frame {frame_id[:60]!r}")
            return (self.rules.folder / f"{frame_id}.jpg").read_bytes()

    def label(self, frame_id: str, label: str | None, allowed: list[str]) -> dict:
        """Label a frame with one of `allowed` (None takes its label back: undo)."""
        if label is not None and label not in allowed:
            raise CaptureError(f"label {str(label)[:60]!r} is not one of {', '.join(allowed)}")
        with self.lock:
            frame = self.frames.get(frame_id)
            if frame is None:
                raise CaptureError(f"no frame {frame_id[:60]!r}")
            self._rewrite(frame, {**frame.info, "label": label, "exported": None,
                                  "labelled": now_iso(time.time()) if label else None})
        return {"id": frame_id, "label": label}

    def export(self, out: io.RawIOBase | io.BufferedIOBase) -> int:
        """Write the labelled frames to `out` as a tar: LABEL/ID.jpg and manifest.json (each
        frame's SHA-256, device, model, label and times); mark them exported. Frames stay in
        the folder (a failed download loses nothing) until room is needed. The count."""
        with self.lock:
            labelled = [frame for frame in self.frames.values() if frame.label is not None]
        entries = []
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for frame in labelled:
                data = (self.rules.folder / f"{frame.id}.jpg").read_bytes()
                name = f"{frame.label}/{frame.id}.jpg"
                add_bytes(tar, name, data)
                info = frame.info
                entries.append({"file": name, "sha256": hashlib.sha256(data).hexdigest(),
                                "device": info["device"], "model": info["model"],
                                "model_sha256": info["model_sha256"], "label": frame.label,
                                "time": info["time"], "labelled": info["labelled"],
                                "answer": info["answer"], "score": info["score"]})
            manifest = {"device": self.device, "exported": now_iso(time.time()),
                        "frames": entries}
            add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
        stamp = now_iso(time.time())
        with self.lock:
            for frame in labelled:
                if frame.id in self.frames and frame.label is not None:
                    self._rewrite(frame, {**frame.info, "exported": stamp})
        return len(labelled)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def chunks(file, size: int = 1 << 16) -> Iterator[bytes]:
    """A file's bytes from the start, `size` at a time (a response streams them)."""
    file.seek(0)
    while data := file.read(size):
        yield data
