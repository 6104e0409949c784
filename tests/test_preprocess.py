"""runtime.preprocess.load_image: one decode path for every kind of input."""

import io

import numpy as np
import pytest
from PIL import Image

from edgeconv.runtime.preprocess import MAX_PIXELS, ImageError, load_image


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def halves(width=40, height=20) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_returns_uint8_rgb_at_the_requested_size(tmp_path):
    path = save(halves(), tmp_path / "a.jpg", quality=95)
    pixels = load_image(path, (30, 50))
    assert pixels.shape == (30, 50, 3) and pixels.dtype == np.uint8
    assert pixels[15, 5, 0] > 200 and pixels[15, 45, 2] > 200


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    path = save(halves(), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    pixels = load_image(path, (40, 20))  # upright the photo is 20 wide, 40 high
    top, bottom = pixels[5, 10], pixels[35, 10]
    assert top[0] > 200 and top[2] < 60  # the red (left) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1"])
def test_other_modes_become_rgb(tmp_path, mode):
    image = halves().convert(mode)
    path = save(image, tmp_path / f"x.{'jpg' if mode in ('L', 'CMYK') else 'png'}")
    pixels = load_image(path, (20, 40))
    assert pixels.shape == (20, 40, 3)
    expected = np.asarray(halves().convert(mode).convert("RGB").resize((40, 20)), np.int16)
    assert np.abs(pixels.astype(np.int16) - expected).mean() < 12


def test_rgba_transparency_is_composited_on_white(tmp_path):
    pixels = np.zeros((10, 10, 4), np.uint8)
    pixels[..., 2] = 255
    pixels[:, 5:, 3] = 255  # left half transparent, right half opaque blue
    path = save(Image.fromarray(pixels, "RGBA"), tmp_path / "alpha.png")
    out = load_image(path, (10, 10))
    assert tuple(out[5, 1]) == (255, 255, 255)
    assert tuple(out[5, 8]) == (0, 0, 255)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    path = save(Image.fromarray(ramp), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, (8, 64))[..., 0].astype(int)
    assert out[0, 0] <= 2 and out[0, -1] >= 253
    assert 110 <= out[0, 32] <= 145  # mid-grey stays mid-grey instead of saturating


def test_arrays_pil_images_bytes_and_paths_agree(tmp_path):
    path = save(halves(), tmp_path / "a.png")
    from_path = load_image(path, (15, 15))
    assert np.array_equal(from_path, load_image(path.read_bytes(), (15, 15)))
    assert np.array_equal(from_path, load_image(Image.open(path), (15, 15)))
    assert np.array_equal(from_path, load_image(np.asarray(halves()), (15, 15)))


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"hello, not a picture", "not an image"),
        ("truncated", "corrupt or truncated"),
        ("bomb", "MP limit"),
    ],
)
def test_bad_inputs_raise_one_line_image_errors(tmp_path, content, reason):
    if content == "truncated":
        whole = io.BytesIO()
        halves(400, 300).save(whole, "JPEG")
        content = whole.getvalue()[: len(whole.getvalue()) // 2]
    elif content == "bomb":  # a tiny file whose header claims a huge picture
        side = int(MAX_PIXELS**0.5) + 100
        whole = io.BytesIO()
        Image.new("1", (side, side)).save(whole, "PNG")
        content = whole.getvalue()
        assert len(content) < 2_000_000
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as caught:
        load_image(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.jpg")


def test_small_jpegs_take_the_full_decode_path_unchanged(real_data):
    from edgeconv.runtime.preprocess import open_image

    for photo in sorted((real_data / "test" / "cats").iterdir())[:20]:
        assert open_image(photo, 150).size == Image.open(photo).size  # no reduced decode
        assert np.array_equal(load_image(photo), load_image(photo, fast_jpeg=False))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_stays_close(real_data):
    from edgeconv.runtime.preprocess import open_image

    photo = real_data / "test" / "dogs" / "dog.1501.jpg"
    buffer = io.BytesIO()
    Image.open(photo).convert("RGB").resize((2400, 1800)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    assert open_image(data, 150).size == (600, 450)  # 1/4: still twice 150 on each side
    assert open_image(data, 300).size == (1200, 900)  # 1/2 for a 300-pixel model
    assert open_image(data).size == (2400, 1800)
    fast, full = load_image(data), load_image(data, fast_jpeg=False)
    assert fast.shape == full.shape == (150, 150, 3)
    assert np.abs(fast.astype(int) - full).mean() < 1.0


def test_special_files_are_reported_never_read_forever(tmp_path):
    import os

    from edgeconv.runtime.preprocess import list_images

    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 32)
    expected = {"fifo.jpg": "a FIFO", "zero.jpg": "a device", "broken.jpg": "broken symbolic",
                "a.jpg": "symbolic link loop", "b.jpg": "symbolic link loop",
                "phone.heic": "HEIC/HEIF photos are not supported"}
    assert [p.name for p in list_images(tmp_path)] == sorted(expected)
    for name, message in expected.items():
        with pytest.raises(ImageError, match=message):
            load_image(tmp_path / name)


def test_a_name_that_is_not_one_printable_line_is_escaped():
    from edgeconv.runtime.preprocess import display

    assert display("new\nline.jpg") == "new\\nline.jpg"
    assert display(b"bad-\xff.jpg".decode("utf-8", "surrogateescape")) == "bad-\\udcff.jpg"


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("RGBA", "PNG"), ("I", "TIFF")])
def test_decoding_bombs_are_refused_by_their_bytes_before_decoding(mode, fmt):
    """8000x8000 is under the pixel limit, but 16-bit, alpha or 32-bit pixels are 122-244 MB."""
    data = encoded(Image.new(mode, (8000, 8000)), fmt, **(
        {"compression": "tiff_deflate"} if fmt == "TIFF" else {}))
    assert len(data) < 400_000
    with pytest.raises(ImageError, match=r"needs \d+ MB to decode \(the limit is 64 MB\)"):
        load_image(data)


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding():
    progressive = encoded(halves(400, 300), "JPEG", progressive=True)
    assert load_image(progressive).shape == (150, 150, 3)  # a real one: about 10 scans
    bomb = progressive[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * 2000 + b"\xff\xd9"
    with pytest.raises(ImageError, match="a JPEG of 20.. scans"):
        load_image(bomb)


def test_sixteen_bit_images_convert_without_floats_as_before():
    from edgeconv.runtime.preprocess import to_rgb

    values = np.arange(0, 65536, 7, dtype=np.uint16)[:9000].reshape(90, 100)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    expected = np.clip(values.astype(np.float64) * (255.0 / 65535.0), 0, 255).round()
    assert np.array_equal(np.asarray(to_rgb(image))[:, :, 0], expected.astype(np.uint8))


def test_a_large_image_within_budget_is_reduced_before_conversion():
    big = Image.new("RGBA", (3000, 2000), (10, 200, 30, 255))
    assert load_image(encoded(big, "PNG"))[0, 0].tolist() == [10, 200, 30]
    assert np.array_equal(load_image(encoded(big, "PNG")), load_image(big.convert("RGB")))


def test_decodes_wait_for_a_slot_then_report_busy():
    from edgeconv.runtime.preprocess import DECODE_SLOTS, ImageBusy

    data = encoded(halves(400, 300), "PNG")
    taken = 0
    while DECODE_SLOTS.acquire(blocking=False):
        taken += 1
    try:
        with pytest.raises(ImageBusy, match="busy"):
            load_image(data, wait=0.1)
    finally:
        for _ in range(taken):
            DECODE_SLOTS.release()
    assert load_image(data, wait=0.1).shape == (150, 150, 3)
