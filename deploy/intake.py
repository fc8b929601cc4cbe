"""Image bytes from the line (an HTTP body, a dropped file) -> a checked uint8 image, or a reason.

``deploy serve`` and ``deploy watch`` take bytes from software the kit does not control, so
before decoding they name what is wrong: no bytes, a format the station does not take, an image
cut short (a camera upload that broke off, a file still being written), bytes that are no image,
an image whose header declares more pixels or more decoded bytes than ``max_pixels`` allows
(``deploy.image_header`` reads the header; nothing is decoded blind). OpenCV alone would decode a
truncated JPEG, even one with an end marker appended, into a grey-padded picture without a word, and
the model would decide on it. Decoding itself is ``deploy.preprocess.convert_image``, the same
conversion ``read_image`` uses, so a part decided over HTTP gets exactly the tensor ``deploy
predict`` gives the same file.
"""

from __future__ import annotations

import struct
import unicodedata
from typing import NamedTuple

import cv2
import numpy as np

from deploy.errors import ImageReadError
from deploy.image_header import (FORMATS, Header, HeaderCut, HeaderUnreadable, jpeg_frame, png_end, read_header,
                                 sniff_format, tiff_end)
from deploy.preprocess import Channels, convert_image

MEDIA_TYPES = {
    "image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg", "image/bmp": "bmp",
    "image/x-bmp": "bmp", "image/x-ms-bmp": "bmp", "image/tiff": "tiff", "image/tif": "tiff",
    "application/octet-stream": None,  # any of FORMATS, told apart by its bytes
}
MAX_PIXELS = 200_000_000  # deploy serve / watch --max-pixels; OpenCV's own cap is 2^30 pixels
_OTHER_IMAGES = {b"GIF87a": "gif", b"GIF89a": "gif", b"\x00\x00\x01\x00": "ico", b"8BPS": "psd"}


MAX_PART_ID_CHARS = 200
# Characters a part id may not hold: controls (C0, C1 such as U+0085), formatting characters (the bidi
# overrides U+202A-U+202E and isolates U+2066-U+2069, zero-width characters), line and paragraph separators
# (U+2028, U+2029), lone surrogates. They forge or hide text in logs, CSV files and screens.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class IntakeError(ImageReadError):
    """Bytes the station cannot decide on; ``kind`` names the case (metrics, logs), ``status`` the
    HTTP answer ``deploy serve`` gives."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


def check_part_id(value: str | None) -> str | None:
    """A part id is at most ``MAX_PART_ID_CHARS`` characters of printable text; anything else is one 400."""
    if value is None or value == "":
        return None
    if len(value) > MAX_PART_ID_CHARS:
        raise IntakeError("bad_part_id", f"part_id must be at most {MAX_PART_ID_CHARS} printable characters "
                          f"(got {len(value)} characters)")
    for c in value:
        if c == "\ufffd":
            raise IntakeError("bad_part_id", "part_id is not valid UTF-8 (it decoded to U+FFFD); percent-encode its "
                              "UTF-8 bytes in ?part_id= or send them as they are in X-Part-Id")
        if unicodedata.category(c) in _REFUSED_CATEGORIES:
            name = unicodedata.name(c, "a control character")
            raise IntakeError("bad_part_id", f"part_id holds U+{ord(c):04X} ({name}): control, line-separator and "
                              "bidi or other formatting characters are refused; send printable text")
    return value


class Intake(NamedTuple):
    image: np.ndarray  # uint8 HxWxC in the bundle's channels
    format: str  # png | jpeg | bmp | tiff


def check_media_type(content_type: str | None) -> None:
    """A declared media type the station does not take is refused before the body is looked at
    (415); none, or ``application/octet-stream``, leaves it to the bytes."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise IntakeError("unsupported_media_type", f"media type {media!r} is not taken; send one of "
                          f"{', '.join(sorted(MEDIA_TYPES))} (or multipart/form-data with the image as a file)", 415)


def max_decoded_bytes(max_pixels: int) -> int:
    """The most bytes one decoded image may take: as many as an 8-bit colour image of ``max_pixels``. A 16-bit
    RGBA image (8 bytes a pixel) may therefore have 3/8 of the pixels an 8-bit colour one may."""
    return 3 * max_pixels


def peek_header(data: bytes) -> Header | None:
    """What ``data`` declares, None when it is no image the station takes or its header cannot be read."""
    fmt = sniff_format(data)
    if fmt is None:
        return None
    try:
        return read_header(data, fmt)
    except (HeaderCut, HeaderUnreadable):
        return None


def check_header(data: bytes, fmt: str, max_pixels: int = MAX_PIXELS, source: str = "image") -> Header:
    """The header's size, checked before decoding: a small file can declare a huge image. An image whose
    header does not say its size is refused (never decoded blind); one whose header points past its bytes
    is cut short."""
    try:
        header = read_header(data, fmt)
    except HeaderCut as exc:
        raise IntakeError("truncated_image", f"{source}: the {fmt.upper()} data ends early ({len(data)} bytes: {exc}): "
                          "the upload or the file write was cut short") from None
    except HeaderUnreadable as exc:
        if not is_complete(data, fmt):  # a JPEG cut before its frame header, say: still being written
            raise IntakeError("truncated_image", f"{source}: the {fmt.upper()} data ends early ({len(data)} bytes): "
                              "the upload or the file write was cut short") from None
        raise IntakeError("corrupt_image", f"{source}: the {fmt.upper()} header does not say the image's size "
                          f"({exc}); refused before decoding") from None
    if header.pixels > max_pixels:
        raise IntakeError("too_large", f"{source}: a {header.width}x{header.height} {fmt.upper()} "
                          f"({header.pixels / 1e6:.0f} MP); the station decodes at most {max_pixels / 1e6:g} MP per "
                          "image (--max-pixels)", 413)
    limit = max_decoded_bytes(max_pixels)
    if header.decoded_bytes > limit:
        raise IntakeError("too_large", f"{source}: a {header.describe()} takes {header.decoded_bytes / 1e6:.0f} MB "
                          f"decoded; the station decodes at most {limit / 1e6:.0f} MB per image (3 bytes a pixel of "
                          f"--max-pixels {max_pixels})", 413)
    return header


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def is_complete(data: bytes, fmt: str) -> bool:
    """Does the byte stream reach the end the format declares? PNG: the IEND chunk, found by walking the
    chunks (bytes after it are allowed), or a stream that ends with IEND (then a broken chunk in the middle is
    corruption, not a cut); JPEG: the end-of-image marker, trailing padding allowed; BMP: the file size in its
    header; TIFF: the last strip or tile its first page points to."""
    if fmt == "png":
        return png_end(data) is not None or data[-12:] == _IEND
    if fmt == "jpeg":
        return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"
    if fmt == "bmp":
        declared = struct.unpack_from("<I", data, 2)[0]
        return declared == 0 or len(data) >= declared
    try:
        return tiff_end(data) <= len(data)
    except HeaderCut:
        return False
    except HeaderUnreadable:
        return True  # check_header refused it already; the decoder decides


_JPEG_HUFFMAN_DCT = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive: at least one bit per 8x8 block
_JPEG_PADS = (b"\x55" * 256, b"\x00" * 256)


def _check_jpeg_length(data: bytes, source: str) -> None:
    """libjpeg pads missing scan data with grey, silently: a JPEG too short for its declared size is refused."""
    frame = jpeg_frame(data)
    if frame is not None and frame.marker in _JPEG_HUFFMAN_DCT:
        needed = -(-frame.width // 8) * -(-frame.height // 8) // 8  # every 8x8 block codes its DC in >= 1 bit
        if len(data) < needed:
            raise IntakeError("truncated_image", f"{source}: the JPEG declares {frame.width}x{frame.height} px but has "
                              f"{len(data)} bytes, fewer than the {needed} any such JPEG needs: cut short or corrupt")


def _jpeg_scan_cut_short(data: bytes, img: np.ndarray) -> bool:
    """A JPEG cut short with an end marker appended decodes without an error: libjpeg leaves the missing
    blocks empty, flat grey 128 to the last pixel. Only such an image is checked further: its scan data is
    given more bytes before the end marker. A complete scan ignores them (the image stays the same); a scan
    that ran out of data decodes them into its missing blocks (the image changes). Not caught: a progressive
    JPEG cut between two of its scans, which decodes to a complete, blurrier picture, as a low-quality one would."""
    if img.ndim < 2 or img.shape[0] < 8 or img.shape[1] < 8 or not np.all(img[-8:, -8:] == 128):
        return False
    end = len(data.rstrip(b"\x00\r\n ")) - 2
    for pad in _JPEG_PADS:
        again = cv2.imdecode(np.frombuffer(data[:end] + pad + data[end:], np.uint8), cv2.IMREAD_UNCHANGED)
        if again is None or again.shape != img.shape or not np.array_equal(again, img):
            return True
    return False


def decode_bytes(data: bytes, channels: Channels, source: str = "image", max_pixels: int = MAX_PIXELS) -> Intake:
    """Check and decode one image's bytes; ``IntakeError`` says why not. ``max_pixels`` bounds the pixels and,
    at 3 bytes a pixel, the decoded bytes (``max_decoded_bytes``), both read from the header before decoding."""
    if not data:
        raise IntakeError("empty_body", f"{source}: no bytes (empty body or file); send the image file's bytes")
    fmt = sniff_format(data)
    if fmt is None:
        other = next((name for magic, name in _OTHER_IMAGES.items() if data.startswith(magic)), None)
        if other is not None:
            raise IntakeError("unsupported_media_type", f"{source}: a {other.upper()} image; the station takes "
                              f"{', '.join(f.upper() for f in FORMATS)}", 415)
        raise IntakeError("not_an_image", f"{source}: {len(data)} bytes that are not a PNG, JPEG, BMP or TIFF image")
    check_header(data, fmt, max_pixels, source)
    if not is_complete(data, fmt):
        raise IntakeError("truncated_image", f"{source}: the {fmt.upper()} data ends early ({len(data)} bytes): "
                          "the upload or the file write was cut short")
    if fmt == "jpeg":
        _check_jpeg_length(data, source)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises on some malformed headers instead of returning None
        raise IntakeError("not_an_image", f"{source}: the {fmt.upper()} data does not decode ({str(exc).strip()[-120:]})") from None
    if img is None or img.size == 0:
        raise IntakeError("corrupt_image", f"{source}: the {fmt.upper()} data does not decode (corrupt or cut short)")
    if fmt == "jpeg" and _jpeg_scan_cut_short(data, img):
        raise IntakeError("truncated_image", f"{source}: the JPEG's scan data ends before its last block (cut short, "
                          "an end marker appended): the bottom of the picture would be flat grey")
    try:
        return Intake(convert_image(img, channels, source=source), fmt)
    except ImageReadError as exc:
        raise IntakeError("unsupported_image", str(exc)) from None
