"""Pictures in and out of the HTTP API: base64 (with or without a `data:image/...;base64,` prefix) to a checked
PIL image, and images to base64 in the format asked for. A picture that is not one, or is too big to decode,
is the client's error (400), found before Pillow spends memory on it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from ldm.errors import LdmError
from ldm.outputs.png import png_bytes

DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


class BadImage(LdmError):
    """An uploaded picture that cannot be used (HTTP 400)."""


def from_base64(text: str, what: str, max_pixels: int) -> Image.Image:
    """Decode `text` (what: the field, for the message) to a loaded PIL image."""
    try:
        data = base64.b64decode(DATA_URL.sub("", text.strip(), count=1), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{what} is not base64; send the file's bytes base64-encoded") from None
    return from_bytes(data, what, max_pixels)


def from_bytes(data: bytes, what: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"{what} is {width}x{height}, over this server's {max_pixels} pixels (--max-image-pixels)"
                )
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{what} has too many pixels to decode") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(
            f"{what} is not a picture Pillow can read ({type(e).__name__}); send a PNG, JPEG or WebP"
        ) from None
    return image


def to_base64(image: Image.Image, parameters: str | None, output_format: str = "png", quality: int = 95) -> str:
    """A base64 image without prefix (what A1111 and OpenAI send); a PNG carries its `parameters` chunk."""
    kind = FORMATS[output_format]
    if kind == "PNG":
        return base64.b64encode(png_bytes(image, parameters)).decode()
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=kind, quality=quality)
    return base64.b64encode(buffer.getvalue()).decode()
