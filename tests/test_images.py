"""Safe image loading: every bad file gets a clear ImageError; odd modes, EXIF rotation and GPS are handled."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from geodemo.images import MAX_SIDE, ImageError, load_image, read_gps, to_rgb


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def test_corrupt_and_non_images_give_clear_errors(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture at all")
    with pytest.raises(ImageError, match="not an image"):
        load_image(text)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    with pytest.raises(ImageError, match="not an image"):
        load_image(garbage)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")


def test_truncated_jpeg_is_refused(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = jpeg_bytes(Image.fromarray(pixels))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(path)


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)  # 1.6 billion grey pixels
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(ImageError, match="pixels"):
        load_image(path)


def test_huge_jpeg_is_downscaled_through_draft_mode(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (10000, 10000), 128).save(path, quality=30)
    loaded = load_image(path)
    assert loaded.original_size == (10000, 10000)
    assert max(loaded.image.size) == MAX_SIDE and loaded.image.mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "LA", "1", "I", "F"])
def test_modes_become_rgb(mode):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert(mode)
    loaded = load_image(image)
    assert loaded.image.mode == "RGB" and loaded.image.size == (40, 30)


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(values)))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red, the rest fully transparent
    rgb = np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[1, 1].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red
    pixels[:, 30:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # display = stored image rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    out = np.asarray(load_image(path).image).astype(int)
    assert out.shape[:2] == (60, 40)
    assert out[5, 20, 0] > 200 and out[-5, 20, 2] > 200  # red on top, blue at the bottom


def with_gps(image: Image.Image, lat_ref, lat, lon_ref, lon) -> bytes:
    image = image.copy()
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: lat_ref, 2: lat, 3: lon_ref, 4: lon})
    return jpeg_bytes(image, exif=exif)


def test_exif_gps_is_read_with_signs():
    image = Image.new("RGB", (16, 16), "white")
    paris = load_image(with_gps(image, "N", (48.0, 51.0, 24.12), "E", (2.0, 21.0, 7.0)))
    assert paris.gps == pytest.approx((48.8567, 2.351944), abs=1e-4)
    rio = load_image(with_gps(image, "S", (22.0, 54.0, 0.0), "W", (43.0, 12.0, 0.0)))
    assert rio.gps == pytest.approx((-22.9, -43.2), abs=1e-6)
    assert load_image(image).gps is None
    assert read_gps(Image.open(io.BytesIO(with_gps(image, "N", (95.0, 0.0, 0.0), "E", (0.0, 0.0, 0.0))))) is None
