"""Resumable HTTP download with a progress bar and a size/checksum check."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from edgeconv.runtime.progress import ProgressBar

CHUNK = 1 << 20


class DownloadError(Exception):
    """A download that failed or did not match its expected size or checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, size: int | None = None, sha256: str | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, resuming a partial `dest.part` left by an earlier attempt.

    The file appears under `dest` only once complete and verified against `size` and
    `sha256` (when given). A checksum mismatch deletes the partial file.
    """
    dest = Path(dest)
    if dest.exists() and _verified(dest, size, sha256):
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is None or offset < size:
        _fetch(url, part, offset, size, timeout)
    actual = part.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{url}: got {actual} bytes, expected {size}; run again to resume")
    if sha256 is not None and sha256_of(part).lower() != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: SHA-256 mismatch, download discarded; run again")
    os.replace(part, dest)
    return dest


def _verified(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_of(path).lower() == sha256.lower()


def _fetch(url: str, part: Path, offset: int, size: int | None, timeout: float) -> None:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing past what we have: the part is complete
            return
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    with response:
        resumed = offset and response.status == 206
        if not resumed:
            offset = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = size or (offset + int(length) if length else None)
        bar = ProgressBar(total, f"download {part.name[:-5]}", "MB", scale=1 << 20, done=offset)
        try:
            with open(part, "ab" if resumed else "wb") as file:
                for block in iter(lambda: response.read(CHUNK), b""):
                    file.write(block)
                    bar.update(len(block))
        except OSError as error:
            raise DownloadError(f"{url}: interrupted ({error}); run again to resume") from None
        finally:
            bar.close()
