"""Image bytes from the line (an HTTP body, a dropped file) -> a checked uint8 image, or a reason.

``deploy serve`` and ``deploy watch`` take bytes from software the kit does not control, so
before decoding they name what is wrong: no bytes, a format the station does not take, an image
cut short (a camera upload that broke off, a file still being written), bytes that are no image.
OpenCV alone would decode a truncated JPEG into a grey-padded picture without a word, and the
model would decide on it. Decoding itself is ``deploy.preprocess.convert_image``, the same
conversion ``read_image`` uses, so a part decided over HTTP gets exactly the tensor
``deploy predict`` gives the same file.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import cv2
import numpy as np

from deploy.errors import ImageReadError
from deploy.preprocess import Channels, convert_image

# What the station decodes, by magic bytes. (TIFF: little- and big-endian.)
FORMATS = ("png", "jpeg", "bmp", "tiff")
MEDIA_TYPES = {
    "image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg", "image/bmp": "bmp",
    "image/x-bmp": "bmp", "image/x-ms-bmp": "bmp", "image/tiff": "tiff", "image/tif": "tiff",
    "application/octet-stream": None,  # any of FORMATS, told apart by its bytes
}
MAX_PIXELS = 200_000_000  # a 200 MP gray image is 200 MB decoded; OpenCV's own cap is 2^30 pixels
_OTHER_IMAGES = {b"GIF87a": "gif", b"GIF89a": "gif", b"\x00\x00\x01\x00": "ico", b"8BPS": "psd"}


class IntakeError(ImageReadError):
    """Bytes the station cannot decide on; ``kind`` names the case (metrics, logs), ``status`` the
    HTTP answer ``deploy serve`` gives."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


class Intake(NamedTuple):
    image: np.ndarray  # uint8 HxWxC in the bundle's channels
    format: str  # png | jpeg | bmp | tiff


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes, None when it is none the station takes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data.startswith(b"II*\x00") or data.startswith(b"MM\x00*"):
        return "tiff"
    return None


def check_media_type(content_type: str | None) -> None:
    """A declared media type the station does not take is refused before the body is looked at
    (415); none, or ``application/octet-stream``, leaves it to the bytes."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise IntakeError("unsupported_media_type", f"media type {media!r} is not taken; send one of "
                          f"{', '.join(sorted(MEDIA_TYPES))} (or multipart/form-data with the image as a file)", 415)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_HUFFMAN_DCT = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive: at least one bit per 8x8 block


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, SOF marker) from the JPEG frame header, None when none is found before the scan."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = struct.unpack_from(">H", data, i + 2)[0]
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height, marker
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first TIFF page (tags 256, 257), None when the header is unreadable."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        count = struct.unpack_from(order + "H", data, ifd)[0]
        size: dict[int, int] = {}
        for k in range(min(count, 512)):
            tag, typ = struct.unpack_from(order + "HH", data, ifd + 2 + 12 * k)
            if tag in (256, 257) and typ in (3, 4):
                size[tag] = struct.unpack_from(order + ("H" if typ == 3 else "I"), data, ifd + 2 + 12 * k + 8)[0]
    except struct.error:
        return None
    return (size[256], size[257]) if len(size) == 2 else None


def declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) the header declares, read without decoding: a few bytes can declare a picture
    that takes gigabytes to decode. None when the header does not say (the decoder then decides)."""
    try:
        if fmt == "png" and len(data) >= 24:
            return struct.unpack_from(">II", data, 16)
        if fmt == "jpeg":
            frame = _jpeg_frame(data)
            return frame[:2] if frame else None
        if fmt == "bmp":
            header = struct.unpack_from("<I", data, 14)[0]
            if header == 12:  # BITMAPCOREHEADER
                return struct.unpack_from("<HH", data, 18)
            width, height = struct.unpack_from("<ii", data, 18)
            return abs(width), abs(height)
        if fmt == "tiff":
            return _tiff_size(data)
    except struct.error:
        return None
    return None


def is_complete(data: bytes, fmt: str) -> bool:
    """Does the byte stream end where the format says it ends? (PNG: the IEND chunk; JPEG: the
    end-of-image marker, trailing padding allowed; BMP: the file size in its header.) TIFF has no
    end marker; a cut TIFF fails to decode instead."""
    if fmt == "png":
        return len(data) >= 12 and data[-8:-4] == b"IEND"
    if fmt == "jpeg":
        return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"
    if fmt == "bmp":
        declared = struct.unpack_from("<I", data, 2)[0]
        return declared == 0 or len(data) >= declared
    return True


def decode_bytes(data: bytes, channels: Channels, source: str = "image") -> Intake:
    """Check and decode one image's bytes; ``IntakeError`` says why not."""
    if not data:
        raise IntakeError("empty_body", f"{source}: no bytes (empty body or file); send the image file's bytes")
    fmt = sniff_format(data)
    if fmt is None:
        other = next((name for magic, name in _OTHER_IMAGES.items() if data.startswith(magic)), None)
        if other is not None:
            raise IntakeError("unsupported_media_type", f"{source}: a {other.upper()} image; the station takes "
                              f"{', '.join(f.upper() for f in FORMATS)}", 415)
        raise IntakeError("not_an_image", f"{source}: {len(data)} bytes that are not a PNG, JPEG, BMP or TIFF image")
    size = declared_size(data, fmt)  # a small file can declare a huge image: check before decoding
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        width, height = size
        raise IntakeError("too_large", f"{source}: a {width}x{height} {fmt.upper()} ({width * height / 1e6:.0f} MP); "
                          f"the station decodes at most {MAX_PIXELS / 1e6:.0f} MP per image", 413)
    if not is_complete(data, fmt):
        raise IntakeError("truncated_image", f"{source}: the {fmt.upper()} data ends early ({len(data)} bytes): "
                          "the upload or the file write was cut short")
    if fmt == "jpeg":  # libjpeg pads missing scan data with grey, silently: the model would decide on it
        frame = _jpeg_frame(data)
        if frame is not None and frame[2] in _JPEG_HUFFMAN_DCT:
            needed = -(-frame[0] // 8) * -(-frame[1] // 8) // 8  # every 8x8 block codes its DC in >= 1 bit
            if len(data) < needed:
                raise IntakeError("truncated_image", f"{source}: the JPEG declares {frame[0]}x{frame[1]} px but has "
                                  f"{len(data)} bytes, fewer than the {needed} any such JPEG needs: cut short or corrupt")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises on some malformed headers instead of returning None
        raise IntakeError("not_an_image", f"{source}: the {fmt.upper()} data does not decode ({str(exc).strip()[-120:]})") from None
    if img is None or img.size == 0:
        raise IntakeError("corrupt_image", f"{source}: the {fmt.upper()} data does not decode (corrupt or cut short)")
    try:
        return Intake(convert_image(img, channels, source=source), fmt)
    except ImageReadError as exc:
        raise IntakeError("unsupported_image", str(exc)) from None
