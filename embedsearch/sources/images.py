"""Decode one image safely into an RGB PIL image: allowlisted formats, EXIF orientation, every pixel mode."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from embedsearch.sources.base import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS  # re-exported: its old home
from embedsearch.sources.base import ImageLoadError, check_path
from embedsearch.sources.hf_dataset import read_row_image, row_split
from embedsearch.sources.shards import member_split, read_member

# Formats Pillow may open. EPS/PDF/etc. are never handed to Pillow (EPS would reach Ghostscript).
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")  # MPO opens through JPEG


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited over white, 16/32-bit and float data are scaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 65535.0
        elif mode == "I":
            # 16-bit PNGs decode as mode I: scale by the bit depth the values need, never clip
            hi = a.max(initial=0)
            a = a / (65535.0 if hi > 255 else 255.0) if hi >= 0 else a
        else:  # F: values already in [0, 1] stay; anything else is min-max scaled
            lo, hi = a.min(initial=0), a.max(initial=0)
            if lo < 0 or hi > 1:
                a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        a8 = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info) or (
        mode in ("L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, root: Path | None = None, member: tuple[int, int] | None = None
               ) -> Image.Image:
    """Open `path` as RGB with EXIF orientation applied; raise ImageLoadError with a reason otherwise. A path below a
    regular `.tar` file (`SHARD.tar/KEY.jpg`) is that shard's member, the one its vector came from (the first of its
    name); `member` = (data offset, size) reads it with one seek, else the shard's member index does (its headers
    are read once per process, not once per image). A path below a regular `.arrow`/`.parquet` file
    (`FILE.arrow/COLUMN/ROW`) is that row's image in a Hugging Face dataset."""
    p = Path(path)
    plain = p.exists() or p.is_symlink()  # a broken link or a loop is a file that fails with its reason
    row = None if plain else row_split(p)
    if row is not None:  # FILE.arrow/COLUMN/ROW: a row of a Hugging Face dataset (sources/hf_dataset.py)
        check_path(row[0], root)
        return decode_image(io.BytesIO(read_row_image(*row)), str(p))
    inside = None if plain else member_split(p)
    if inside is None:
        check_path(p, root)
        return decode_image(p, str(p))
    shard, name = inside
    check_path(shard, root)
    data = read_member(shard, name, *(member or (None, None)))
    return decode_image(io.BytesIO(data), str(p))


def decode_image(src, name: str, max_pixels: int | None = None) -> Image.Image:
    """Decode a file path or a binary file object (an upload) as RGB, with the same allowlist, EXIF orientation and
    bomb checks as indexing; `max_pixels` refuses larger images from the header alone, before any pixel is decoded.
    `name` is what error messages call the image."""
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning (over MAX_IMAGE_PIXELS) is treated as an error: a 1-pixel-per-byte bomb
            # would otherwise be decoded; DecompressionBombError (2× the limit) is not an OSError, caught below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src, formats=ALLOWED_FORMATS) as im:
                if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                    raise ImageLoadError("decode", "TooManyPixels", f"{name}: {im.size[0]}×{im.size[1]} pixels, "
                                         f"over the limit of {max_pixels:,}")
                if getattr(im, "is_animated", False):
                    im.seek(0)  # first frame only
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # broken EXIF must not cost us the image
                    pass
                im.load()
                rgb = to_rgb(im)
                rgb.load()
        return rgb
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError("decode", "DecompressionBomb", f"{name}: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("decode", "UnidentifiedImage", f"{name}: not an image in an allowed format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated files raise OSError; bad headers SyntaxError
        raise ImageLoadError("decode", type(e).__name__, f"{name}: {e}") from None
    except Exception as e:  # noqa: BLE001 — a plugin bug must cost one image, not the run
        raise ImageLoadError("decode", type(e).__name__, f"{name}: {e}") from None


def array_to_image(a: np.ndarray) -> Image.Image:
    """An in-memory uint8 HxW or HxWxC array (built-in datasets) as an RGB image."""
    if a.ndim == 2:
        return Image.fromarray(a, "L").convert("RGB")
    return Image.fromarray(a, "RGB")
