"""The one image pipeline: decode -> orient -> RGB -> resize, as uint8 pixels.

Training, calibration, parity checks and the device all call `load_image`, so a photo is
turned into model input the same way everywhere. Scaling to [0, 1] happens inside the model
(a Rescaling layer), so every consumer feeds the raw 0..255 pixels this returns.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeconv.runtime.text import display

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

# Recorded in every exported model so a device can check it resizes the same way.
PREPROCESSING = {
    "color": "RGB",
    "exif_orientation": True,
    "resize": "bilinear",
    "input_range": [0, 255],
    "scaling": "in-model",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".heic", ".heif", ".avif")  # listed so that unsupported ones are reported

# Refuse images whose header claims more pixels than this before decoding them: a
# decompression bomb must not take a small device's memory. 64 MP covers any camera photo.
MAX_PIXELS = 64_000_000
# Files larger than this are refused before they are read: a 64 MP uncompressed RGBA TIFF fits.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# Pixels count too little: an 8000x8000 16-bit or RGBA image is a 124 KB file and a 1 GB
# decode. Memory is what a decode may take (a JPEG is decoded at a reduced scale to fit).
MAX_DECODED_BYTES = 64 * 2**20
# Real encoders write about 10 scans; each scan is another pass over every pixel, so a file
# of thousands of empty scans costs minutes of CPU for a few hundred kilobytes.
MAX_JPEG_SCANS = 100
# Decodes at once: more than the cores only adds memory, never speed.
DECODE_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 1)
# Bytes a pixel takes in memory in each Pillow mode (RGB is stored in 4); palette and 1-bit
# images count as the RGB they become.
_PIXEL_BYTES = {"L": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


class ImageError(ValueError):
    """An input that is not a usable image: empty, corrupt, truncated or too large."""


class ImageBusy(ImageError):
    """Every decoding slot stayed taken for the whole wait: try again later."""


def load_image(source: ImageSource, size: tuple[int, int] = (150, 150),
               fast_jpeg: bool = True, wait: float | None = None) -> np.ndarray:
    """Return `source` as a (height, width, 3) uint8 RGB array resized to `size` (h, w).

    `source` is a path, encoded bytes, a PIL image or an RGB/grayscale numpy array.
    A JPEG at least four times the model's input on each side (a phone photo, not a Kaggle
    one) is decoded at the smallest DCT scale (1/2, 1/4, 1/8) still twice the input on each
    side, then resized as any other; any other image that large is box-averaged to about
    twice the input before its mode is converted. `fast_jpeg=False` decodes every pixel first
    and converts at full size. At most DECODE_SLOTS images decode at once; `wait` is how long
    to wait for a slot (None: as long as it takes) before ImageBusy.
    Raises ImageError with a one-line reason for anything that is not a usable image.
    """
    image = open_image(source, max(size) if fast_jpeg else None, wait)
    if fast_jpeg:
        image = shrink(image, size)
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose a good photo
        image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An image at least four times `size` (h, w) on each side, box-averaged by a whole factor
    to at least twice it, as a large JPEG is decoded (open_image); smaller ones unchanged.
    Done before any mode conversion, so no later step handles every pixel of a large image."""
    factor = min(image.width // (2 * size[1]), image.height // (2 * size[0]))
    if factor < 2 or image.mode in ("P", "1"):  # a palette is averaged once it is RGB
        return image
    return image.resize((image.width // factor, image.height // factor), Image.Resampling.BOX)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (gray, 16-bit, palette, alpha, CMYK) to 8-bit RGB."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Integers, not floats: a float64 copy is 8 bytes a pixel. 16-bit data is scaled
        # down (rounded, never a tie), not clipped; a 32-bit "I" image of 8-bit values stays.
        pixels = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        peak = 65535 if image.mode != "I" or pixels.max(initial=0) > 255 else 255
        pixels = ((pixels * 255 + peak // 2) // peak).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(source: ImageSource, model_side: int | None = None,
               wait: float | None = None) -> Image.Image:
    """Open and decode `source`; raise ImageError if it is not a whole, sane image, or if its
    decode would take more than MAX_DECODED_BYTES or MAX_JPEG_SCANS (before decoding).

    With `model_side`, a large JPEG is decoded at a reduced DCT scale (see load_image); any
    JPEG over the memory budget is decoded at the largest scale within it. `wait`: see
    load_image."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    name = "<bytes>" if isinstance(source, bytes) else display(source)
    data = source if isinstance(source, bytes) else read_regular_file(Path(source), name)
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        raise ImageError(f"{name}: HEIC/HEIF photos are not supported; convert them to JPEG "
                         "(on a phone: Settings > Camera > Formats > Most Compatible)")
    # Entropy-coded data escapes every 0xFF, so each FF DA is a real start of scan.
    scans = data.count(b"\xff\xda") if data[:2] == b"\xff\xd8" else 0
    if scans > MAX_JPEG_SCANS:
        raise ImageError(f"{name}: a JPEG of {scans} scans (at most {MAX_JPEG_SCANS} are "
                         "decoded)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF; we report real faults
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {width}x{height} is over the {MAX_PIXELS // 1_000_000} MP limit"
                )
            if image.format == "JPEG":
                reduce_jpeg(image, model_side)
            if decoded_bytes(image) > MAX_DECODED_BYTES:
                raise ImageError(f"{name}: {width}x{height} {image.mode} needs "
                                 f"{decoded_bytes(image) / 2**20:.0f} MB to decode (the limit "
                                 f"is {MAX_DECODED_BYTES // 2**20} MB)")
            if not DECODE_SLOTS.acquire(timeout=wait):
                raise ImageBusy(f"{name}: busy: every decoding slot stayed taken for {wait} s")
            try:
                image.load()
            finally:
                DECODE_SLOTS.release()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: corrupt or truncated image ({error})") from None
    return image


def decoded_bytes(image: Image.Image) -> int:
    """The memory `image` takes once decoded, at the size it will be decoded at."""
    return image.width * image.height * _PIXEL_BYTES.get(image.mode, 4)


def reduce_jpeg(image: Image.Image, model_side: int | None) -> None:
    """Set a JPEG to decode at the smallest DCT scale still twice `model_side` on each side
    (if that is 1/2 or less), or at the largest scale within MAX_DECODED_BYTES."""
    width, height = image.size
    scale = 1
    if model_side:
        while scale < 8 and min(width, height) >= 2 * model_side * 2 * scale:
            scale *= 2
    while scale < 8 and -(-width // scale) * -(-height // scale) * 4 > MAX_DECODED_BYTES:
        scale *= 2
    if scale > 1:  # draft picks the smallest scale whose size is at least the one asked
        image.draft(None, (width // scale, height // scale))


def read_regular_file(path: Path, name: str) -> bytes:
    """The bytes of a regular file of at most MAX_IMAGE_BYTES; a FIFO, device, socket, broken
    link or huge file is an ImageError, never a read that blocks, never ends or fills memory."""
    try:
        status = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError(f"{name}: symbolic link loop") from None
        if path.is_symlink():
            raise ImageError(f"{name}: broken symbolic link") from None
        raise ImageError(f"{name}: cannot read ({error.strerror or error})") from None
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a folder"
                if stat.S_ISDIR(mode) else "not a regular file")
        raise ImageError(f"{name}: {kind}, not an image file")
    too_big = ImageError(f"{name}: {status.st_size / 2**20:.0f} MiB, over the "
                         f"{MAX_IMAGE_BYTES // 2**20} MiB limit for a photo")
    if status.st_size > MAX_IMAGE_BYTES:
        raise too_big
    try:
        with path.open("rb") as file:
            data = file.read(MAX_IMAGE_BYTES + 1)  # bounded: the file may grow after stat
    except OSError as error:
        raise ImageError(f"{name}: cannot read ({error.strerror or error})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise too_big
    return data


def _from_array(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {pixels.shape} is not an image")
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension (the content is checked on load)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """The entries named like images in `folder` (and below it, not following links to
    folders), sorted by path. Broken links, FIFOs and the like are listed too, so that
    load_image reports them instead of their vanishing in silence."""
    found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(path for path in found if is_image_file(path) and not path.is_dir())
