"""Opening the image files of a data set folder, or saying why one is unusable.

Every image the tool reads, for training, evaluation, prediction or
``check-data``, goes through `read_image`, so they all see the same pixels. An
*unusable* file gets a short *reason* (``"empty file"``, ``"truncated JPEG"``);
a *hidden* file (``.DS_Store``, ``Thumbs.db``, ``._name``) is no image at all
and is passed over without a word.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "UnusableImageError",
    "display_path",
    "image_problem",
    "is_hidden",
    "iter_class_files",
    "read_image",
    "tensorflow_decodes_exactly",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
# Smaller slices hold too little anatomy to classify, and are usually icons.
MIN_IMAGE_SIDE = 32
# Names that operating systems and archive tools leave beside real files.
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
_MAGIC_BYTES = (
    (b"\xff\xd8", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"RIFF", "WEBP"),
)
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# Images past Pillow's pixel limit are refused by `_check_dimensions`, with the
# reason; Pillow's warning would only repeat it. Filtered once here, since
# files are opened from many threads and `warnings.catch_warnings` is not
# thread-safe: one thread leaving it restores the filters under another.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_EXIF_ORIENTATION = 0x0112


class UnusableImageError(ValueError):
    """Raised when an image file cannot be used; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{display_path(path)}: {reason}")
        self.reason = reason


def display_path(path: str | os.PathLike | bytes) -> str:
    """A file name safe to print whatever bytes it holds.

    Names that are not valid UTF-8 come back from the file system with
    surrogate escapes; printing them would fail, so their bad bytes are shown
    as ``\\xNN``.
    """
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def is_hidden(name: str) -> bool:
    """Whether a file or folder name is one to pass over silently.

    Dot files (``.DS_Store``, macOS ``._name`` resource forks), Windows'
    ``Thumbs.db`` and ``desktop.ini``, and zip tools' ``__MACOSX`` folders.
    """
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


def iter_class_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Every non-hidden file below a class folder, nested folders included.

    Symbolic links are followed (a folder reached twice is read once); a
    broken link is still yielded so that its problem can be reported.

    Args:
        folder: a class folder.

    Yields:
        The files, in sorted order within each folder.
    """
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for name in sorted(files):
            if not is_hidden(name):
                yield Path(top) / name


def image_problem(path: str | os.PathLike) -> str | None:
    """Why an image file cannot be used, or ``None`` if it can.

    Args:
        path: the image file.

    Returns:
        A short reason, such as ``"empty file"`` or ``"truncated JPEG"``.
    """
    try:
        read_image(path)
    except UnusableImageError as err:
        return err.reason
    return None


def read_image(
    path: str | os.PathLike | bytes, reduce_to: int | None = None
) -> np.ndarray:
    """Reads an image file as 8-bit RGB pixels, as the model sees it.

    The EXIF orientation is applied; a 16-bit or floating-point greyscale image
    is scaled from 0-max to 0-255 (not clipped); transparency is composited on
    black, the background of an MRI slice; palette, CMYK and other modes are
    converted; an animation or multi-page file gives its first frame.

    Args:
        path: the file; ``bytes`` names are accepted as the file system
            gives them.
        reduce_to: the side the image will be resized to, if known. A JPEG
            is then decoded at the smallest DCT scale 1/s (s = 2, 4 or 8)
            whose longer side, s times shorter, is still at least this long:
            the decoder drops the high frequencies of each 8x8 block, which
            averages pixels rather than skipping them and saves most of the
            decoding time of a large slice read at a small size.

    Returns:
        uint8 pixels of shape ``(height, width, 3)``.

    Raises:
        UnusableImageError: the file cannot be used; its ``reason`` says why.
    """
    name = os.fsdecode(path)
    _check_file(name)
    kind = _sniff_format(name)
    try:
        with Image.open(name) as image:
            kind = image.format or kind
            _check_dimensions(name, image)
            image.seek(0)
            if reduce_to and kind == "JPEG":
                image = _reduced_jpeg(image, reduce_to)
            return _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise UnusableImageError(name, "not an image (text/unknown format)") from None
    except Image.DecompressionBombError as err:
        pixels, limit = (re.findall(r"\d+", str(err)) + ["?", "?"])[:2]
        raise UnusableImageError(
            name, f"decompression bomb guard ({pixels} pixels > {limit})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, UnusableImageError):
            raise
        raise UnusableImageError(name, _decode_reason(kind, err)) from None


def tensorflow_decodes_exactly(path: str | os.PathLike | bytes) -> bool:
    """Whether ``tf.io.decode_jpeg`` gives the pixels `read_image` gives.

    True for a plain 8-bit greyscale or RGB JPEG, the public data set's
    files, with no EXIF rotation: both decoders are libjpeg, with the same
    scaled decoding. Only the header is read. Anything else (other formats,
    CMYK, an EXIF orientation, an unreadable file) is False and goes through
    `read_image`, which also names what is wrong with a bad file.

    Args:
        path: the file; ``bytes`` names are accepted as the file system
            gives them.
    """
    name = os.fsdecode(path)
    try:
        with Image.open(name) as image:
            _check_dimensions(name, image)
            return (
                image.format == "JPEG"
                and image.mode in ("L", "RGB")
                and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
            )
    except Exception:  # noqa: BLE001 - any failure means "not plain"
        return False


def _reduced_jpeg(image: Image.Image, side: int) -> Image.Image:
    width, height = image.size
    # Pillow picks the largest scale that leaves each side at least the size
    # asked for; only the longer side matters to the later resize.
    image.draft(None, (side, 1) if width >= height else (1, side))
    scale = round(width / image.size[0])
    if scale == 1:
        return image
    # The decoder rounds the scaled size up, and the last row and column
    # average fewer pixels; cropping them keeps the grid of the file shrunk
    # exactly by the scale, so the anatomy does not shift.
    return image.crop((0, 0, width // scale, height // scale))


def _check_file(name: str) -> None:
    try:
        size = os.stat(name).st_size
    except FileNotFoundError:
        if os.path.islink(name):
            raise UnusableImageError(name, "broken symbolic link") from None
        raise UnusableImageError(name, "file not found") from None
    except OSError as err:
        raise UnusableImageError(name, f"cannot read: {err.strerror}") from None
    if not os.path.isfile(name):
        raise UnusableImageError(name, "not a regular file")
    if size == 0:
        raise UnusableImageError(name, "empty file")


def _sniff_format(name: str) -> str:
    """The format named by a file's first bytes, for a header too short to open."""
    with open(name, "rb") as handle:
        head = handle.read(12)
    for magic, kind in _MAGIC_BYTES:
        if head.startswith(magic):
            return kind
    return "file"


def _check_dimensions(name: str, image: Image.Image) -> None:
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise UnusableImageError(
            name, f"decompression bomb guard ({width * height} pixels > {limit})"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise UnusableImageError(
            name, f"too small ({width}x{height} < {MIN_IMAGE_SIDE} px)"
        )


def _decode_reason(kind: str, err: Exception) -> str:
    message = str(err)
    lowered = message.lower()
    if (
        "truncated" in lowered
        or "broken data stream" in lowered
        or isinstance(err, EOFError)
    ):
        return f"truncated {kind}"
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    return f"cannot decode {kind}: {first_line or type(err).__name__}"[:200]


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in _HIGH_BIT_MODES:
        return _scale_to_uint8(np.asarray(image))
    if image.mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Greyscale of any depth to three 8-bit channels, 0-max onto 0-255."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0)
    values = np.clip(values, 0.0, None)
    top = float(values.max()) or 1.0
    grey = np.round(values / top * 255.0).astype(np.uint8)
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)
