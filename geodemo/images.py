"""Safe image loading: any file a user drops -> an upright RGB image of bounded size, plus EXIF GPS.

Bad files (corrupt, truncated, not an image, absurdly large) raise ImageError with a sentence a
person can act on. Large JPEGs are decoded at a reduced scale (draft mode), so a 10k x 10k photo
never needs its full-resolution pixels in memory; other formats are refused above MAX_PIXELS.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 1024
"""Longest side of the image handed to encoders (they resize to a few hundred pixels anyway)."""
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""Largest image (width x height) we decode (PIL's decompression-bomb limit, ~179 million pixels)."""
GPS_IFD = 0x8825
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why in one sentence."""


@dataclass
class LoadedImage:
    """An RGB image ready for an encoder, with what the file said about itself.

    gps: (lat, lon) degrees from EXIF when present and valid; original_size: (width, height) as stored;
    path: the file it came from, when it came from a file.
    """

    image: Image.Image
    gps: tuple[float, float] | None
    original_size: tuple[int, int]
    source_mode: str
    path: Path | None = None


def load_image(source: str | Path | bytes | BinaryIO | Image.Image, max_side: int = MAX_SIDE) -> LoadedImage:
    """Open, check, decode at reduced scale, rotate upright by EXIF, convert to RGB and bound the size."""
    name = _describe(source)
    try:
        image = source if isinstance(source, Image.Image) else _open(source)
        original_size, source_mode = image.size, image.mode
        width, height = original_size
        if width < 1 or height < 1:
            raise ImageError(f"{name} has no pixels ({width} x {height})")
        if width * height > MAX_PIXELS:
            raise ImageError(f"{name} is {width} x {height} pixels, larger than the {MAX_PIXELS:,}-pixel limit; "
                             "please resize it first")
        gps = read_gps(image)
        exif_orientation = image.getexif().get(0x0112, 1)
        if image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale when that is enough
        image.load()
        image = _upright(image, exif_orientation)
        image = to_rgb(image)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name} has more than {MAX_PIXELS:,} pixels; please resize it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image we can read (not a JPEG, PNG, WebP, TIFF, BMP or GIF file)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise ImageError(f"{name} is damaged or truncated and cannot be decoded ({_short(err)})") from None
    return LoadedImage(image=image, gps=gps, original_size=original_size, source_mode=source_mode,
                       path=Path(source) if isinstance(source, (str, Path)) else None)


def _open(source: str | Path | bytes | BinaryIO) -> Image.Image:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path.name} is an empty file")
        stream: BinaryIO = io.BytesIO(path.read_bytes())
    elif isinstance(source, bytes):
        if not source:
            raise ImageError("the uploaded file is empty")
        stream = io.BytesIO(source)
    else:
        stream = source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are checked by load_image
        return Image.open(stream)


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation (1-8) so that the image is displayed as the camera saw it."""
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode: 16-bit and float scaled to 0-255, CMYK converted, alpha composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_gps(image: Image.Image) -> tuple[float, float] | None:
    """(lat, lon) in degrees from the EXIF GPS block: degrees + minutes/60 + seconds/3600, sign from N/S, E/W."""
    try:
        gps = image.getexif().get_ifd(GPS_IFD)
        if not gps or _GPS_LAT not in gps or _GPS_LON not in gps:
            return None
        lat = _dms_to_degrees(gps[_GPS_LAT]) * (-1 if str(gps.get(_GPS_LAT_REF, "N")).upper().startswith("S") else 1)
        lon = _dms_to_degrees(gps[_GPS_LON]) * (-1 if str(gps.get(_GPS_LON_REF, "E")).upper().startswith("W") else 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OSError, SyntaxError):
        return None
    if not (np.isfinite(lat) and np.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if lat == 0.0 and lon == 0.0:
        return None  # cameras write 0/0 when they have no fix
    return float(lat), float(lon)


def _dms_to_degrees(dms) -> float:
    parts = [float(x) for x in dms]
    if len(parts) != 3:
        raise ValueError("GPS coordinate is not (degrees, minutes, seconds)")
    return parts[0] + parts[1] / 60.0 + parts[2] / 3600.0


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    return "the image"


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]
