"""What an image's bytes declare before they are decoded: format, size, channels, bytes per sample, and
whether the bytes reach the end the format declares.

``deploy.intake`` decides with these what the station decodes: a few hundred bytes can declare a picture
that takes gigabytes to decode, and what a decoder allocates is width x height x channels x bytes per
sample (``Header.decoded_bytes``), not the pixel count alone (a 16-bit RGBA pixel is 8 bytes). Nothing
here decodes pixels; every reader is bounded by the bytes it was given.

TIFF is read in full where it says its size: classic and BigTIFF, either byte order, every integer type
the format allows for a size tag (BYTE, SHORT, LONG, their signed forms, LONG8, SLONG8, IFD and IFD8),
inline or at an offset; the tags ImageWidth, ImageLength, BitsPerSample, SamplesPerPixel, Photometric,
RowsPerStrip, TileWidth and TileLength, and the strip or tile offsets and byte counts that say where the
image data ends. A TIFF whose size cannot be read this way is refused by ``deploy.intake``, never decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FORMATS = ("png", "jpeg", "bmp", "tiff")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


@dataclass(frozen=True)
class Header:
    format: str  # png | jpeg | bmp | tiff
    width: int
    height: int
    channels: int  # as the decoder returns them (an upper bound where the decoder may expand a palette)
    bytes_per_sample: int
    tile_pixels: int = 0  # a tiled TIFF: the decoder also holds one tile


    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """What decoding takes: width x height x channels x bytes per sample (and a tiled TIFF's tile buffer)."""
        return (self.width * self.height + self.tile_pixels) * self.channels * self.bytes_per_sample

    def describe(self) -> str:
        depth = f"{8 * self.bytes_per_sample}-bit"
        return f"{self.width}x{self.height} {depth} {self.channels}-channel {self.format.upper()}"


class HeaderCut(Exception):
    """The header points past the end of the bytes: the image is cut short (or still being written)."""


class HeaderUnreadable(Exception):
    """The header does not say what the image is, in a way the station can trust."""


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes, None when it is none the station takes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data[:4] in _TIFF_MAGIC:
        return "tiff"
    return None


# -- PNG ----------------------------------------------------------------------------------------------
# OpenCV returns palette images as BGR (BGRA with transparency) and gray + alpha as BGRA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


def _png_header(data: bytes) -> Header:
    if len(data) < 29 or data[12:16] != b"IHDR":
        raise (HeaderCut if len(data) < 29 else HeaderUnreadable)("no IHDR chunk where PNG puts it")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise HeaderUnreadable(f"PNG colour type {colour} with bit depth {depth}")
    return Header("png", width, height, _PNG_CHANNELS[colour], 2 if depth == 16 else 1)


def png_end(data: bytes) -> int | None:
    """Where the IEND chunk ends (bytes after it are allowed and ignored), None when the chunks run past
    the end of the data before IEND (cut short)."""
    i = 8
    while i + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind == b"IEND":
            return i + 12
        i += 12 + length
    return None


# -- JPEG ---------------------------------------------------------------------------------------------
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class JpegFrame:
    width: int
    height: int
    marker: int  # the SOF marker: 0xC0 baseline, 0xC2 progressive, ...
    components: int
    precision: int  # bits per sample (8, or 12)


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The JPEG frame header (SOF), None when none is found before the scan."""
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
            if i + 10 > len(data):
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", data, i + 4)
            return JpegFrame(width, height, marker, components, precision)
        i += 2 + length
    return None


def _jpeg_header(data: bytes) -> Header:
    frame = jpeg_frame(data)
    if frame is None:
        raise HeaderUnreadable("no JPEG frame header (SOF) before the scan")
    channels = 1 if frame.components == 1 else max(3, frame.components)
    return Header("jpeg", frame.width, frame.height, channels, 2 if frame.precision > 8 else 1)


# -- BMP ----------------------------------------------------------------------------------------------
def _bmp_header(data: bytes) -> Header:
    if len(data) < 30:
        raise HeaderCut("the BMP header is cut short")
    header = struct.unpack_from("<I", data, 14)[0]
    if header == 12:  # BITMAPCOREHEADER
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
        bits = struct.unpack_from("<H", data, 28)[0]
    return Header("bmp", abs(width), abs(height), 4 if bits == 32 else 3, 1)


# -- TIFF ---------------------------------------------------------------------------------------------
# type -> (struct code, bytes); ASCII, RATIONAL, FLOAT ... never give a size and are refused for size tags
_TIFF_INT_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 6: ("b", 1), 8: ("h", 2), 9: ("i", 4), 13: ("I", 4),
                   16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8)}
_WIDTH, _HEIGHT, _BITS, _PHOTOMETRIC, _STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_BYTES = \
    256, 257, 258, 262, 273, 277, 278, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTES = 322, 323, 324, 325
_TIFF_SIZE_TAGS = {_WIDTH, _HEIGHT, _BITS, _PHOTOMETRIC, _STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_BYTES,
                   _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTES}
_TIFF_MAX_ENTRIES = 4096
_TIFF_MAX_VALUES = 1 << 22  # strips or tiles of one page


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise HeaderCut(f"the TIFF structure points to byte {offset}, past the end of the data ({len(data)} bytes)")
    return struct.unpack_from(fmt, data, offset)


def tiff_tags(data: bytes) -> dict[int, tuple[int, ...]]:
    """The size-giving tags of the first page (IFD), as non-negative integers. ``HeaderCut`` when the
    structure points past the end of the data, ``HeaderUnreadable`` when a tag cannot be trusted."""
    order = "<" if data[:2] == b"II" else ">"
    version = _unpack(order + "H", data, 2)[0]
    if version == 42:  # entry: tag, type, count (4 bytes), value or offset (4 bytes)
        offset_code, entries_code, entry_bytes, first = "I", "H", 12, _unpack(order + "I", data, 4)[0]
    elif version == 43:  # BigTIFF: count and value or offset of 8 bytes each
        if _unpack(order + "HH", data, 4) != (8, 0):
            raise HeaderUnreadable("a BigTIFF header whose offset size is not 8")
        offset_code, entries_code, entry_bytes, first = "Q", "Q", 20, _unpack(order + "Q", data, 8)[0]
    else:
        raise HeaderUnreadable(f"TIFF version {version}")
    if first == 0:  # a writer fills in the first page's offset when the page is written: not yet
        raise HeaderCut("the TIFF's first page is not written yet (its offset is 0)")
    entries = _unpack(order + entries_code, data, first)[0]
    if not 0 < entries <= _TIFF_MAX_ENTRIES:
        raise HeaderUnreadable(f"the first TIFF page has {entries} tags")
    start = first + struct.calcsize(entries_code)
    inline_bytes = struct.calcsize(offset_code)
    _unpack(f"{order}{entry_bytes * entries + inline_bytes}s", data, start)  # the whole table and the next-page link
    tags: dict[int, tuple[int, ...]] = {}
    for k in range(entries):
        at = start + k * entry_bytes
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag not in _TIFF_SIZE_TAGS:
            continue
        count = struct.unpack_from(order + offset_code, data, at + 4)[0]
        tags[tag] = _tiff_values(data, order, tag, kind, count, at + 4 + inline_bytes, offset_code, inline_bytes)
    return tags


def _tiff_values(data: bytes, order: str, tag: int, kind: int, count: int, field: int, offset_code: str,
                 inline_bytes: int) -> tuple[int, ...]:
    if kind not in _TIFF_INT_TYPES:
        raise HeaderUnreadable(f"TIFF tag {tag} has type {kind}, not an integer")
    if not 0 < count <= _TIFF_MAX_VALUES:
        raise HeaderUnreadable(f"TIFF tag {tag} has {count} values")
    code, size = _TIFF_INT_TYPES[kind]
    where = field if count * size <= inline_bytes else _unpack(order + offset_code, data, field)[0]
    values = _unpack(f"{order}{count}{code}", data, where)
    if min(values) < 0:
        raise HeaderUnreadable(f"TIFF tag {tag} is negative ({min(values)})")
    return values


def _one(tags: dict[int, tuple[int, ...]], tag: int, name: str, default: int | None = None) -> int:
    values = tags.get(tag)
    if values is None:
        if default is None:
            raise HeaderUnreadable(f"the TIFF does not say its {name} (tag {tag})")
        return default
    if len(values) != 1 or values[0] == 0:
        raise HeaderUnreadable(f"TIFF {name} (tag {tag}) is {values[:4]}")
    return values[0]


def _tiff_header(data: bytes) -> Header:
    tags = tiff_tags(data)
    width, height = _one(tags, _WIDTH, "width"), _one(tags, _HEIGHT, "height")
    samples = _one(tags, _SAMPLES, "samples per pixel", 1)
    bits = max(tags.get(_BITS, (1,)))
    photometric = tags.get(_PHOTOMETRIC, (1,))[0]
    if not 0 < bits <= 64:
        raise HeaderUnreadable(f"TIFF bits per sample {bits}")
    # OpenCV reads anything but plain gray and RGB (palette, YCbCr, CMYK ...) as 8-bit RGBA
    channels, per_sample = (samples, -(-bits // 8)) if photometric in (0, 1, 2) else (max(samples, 4), max(1, -(-bits // 8)))
    tile_pixels = tags.get(_TILE_WIDTH, (0,))[0] * tags.get(_TILE_LENGTH, (0,))[0]
    return Header("tiff", width, height, channels, per_sample, tile_pixels)


def tiff_end(data: bytes) -> int:
    """Where the first page's image data ends (the last strip or tile); ``HeaderCut`` /
    ``HeaderUnreadable`` as ``tiff_tags``."""
    tags = tiff_tags(data)
    pairs = (_TILE_OFFSETS, _TILE_BYTES) if _TILE_OFFSETS in tags else (_STRIP_OFFSETS, _STRIP_BYTES)
    offsets, counts = tags.get(pairs[0]), tags.get(pairs[1])
    if offsets is None or counts is None or len(offsets) != len(counts):
        raise HeaderUnreadable("the TIFF does not say where its image data lies (strip or tile offsets and byte counts)")
    return max(o + n for o, n in zip(offsets, counts))


def read_header(data: bytes, fmt: str) -> Header:
    """What ``data`` (of format ``fmt``, from ``sniff_format``) declares; ``HeaderCut`` or ``HeaderUnreadable``
    when it cannot be read."""
    try:
        return {"png": _png_header, "jpeg": _jpeg_header, "bmp": _bmp_header, "tiff": _tiff_header}[fmt](data)
    except struct.error:
        raise HeaderCut(f"the {fmt.upper()} header is cut short") from None
