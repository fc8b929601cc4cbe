"""Image bytes from the line (``deploy.intake``, ``deploy.image_header``): what a header declares is bounded
before decoding (pixels and decoded bytes), TIFF sizes are read whatever integer type carries them, and cut or
padded streams are told apart from complete ones. Hand-made bytes (``struct.pack``) where a real encoder would
never write them."""

from __future__ import annotations

import struct
import tracemalloc

import cv2
import numpy as np
import pytest

from deploy.image_header import read_header
from deploy.intake import IntakeError, decode_bytes, max_decoded_bytes
from deploy.preprocess import convert_image

pytestmark = pytest.mark.edge

# TIFF field types by name (TIFF 6.0 and BigTIFF)
SHORT, LONG, SSHORT, SLONG, RATIONAL, LONG8 = 3, 4, 8, 9, 5, 16
_CODES = {1: "B", 3: "H", 4: "I", 5: "II", 8: "h", 9: "i", 16: "Q", 17: "q"}


def tiff_bytes(width: int, height: int, pixels: bytes | None = None, *, width_type: int = SHORT, big: bool = False,
               drop: tuple[int, ...] = (), order: str = "<", strip_bytes: int | None = None) -> bytes:
    """An uncompressed 8-bit gray TIFF in one strip, laid out as libtiff writes it (header, pixel data, then the
    tag table at the end). ``width_type`` types the ImageWidth tag; ``drop`` leaves tags out; ``pixels`` default
    to a gradient of the declared size; ``strip_bytes`` overrides the strip's declared byte count."""
    if pixels is None:
        pixels = bytes((x + y) % 256 for y in range(height) for x in range(width))
    head = 16 if big else 8
    data_at, ifd_at = head, head + len(pixels) + (len(pixels) % 2)
    offset_type = LONG8 if big else LONG
    tags = {256: (width_type, width), 257: (LONG, height), 258: (SHORT, 8), 259: (SHORT, 1), 262: (SHORT, 1),
            273: (offset_type, data_at), 277: (SHORT, 1), 278: (LONG, height),
            279: (offset_type, len(pixels) if strip_bytes is None else strip_bytes)}
    count_code, field_bytes = ("Q", 8) if big else ("H", 4)
    table = struct.pack(order + count_code, len(tags) - len(drop))
    for tag, (kind, value) in sorted(tags.items()):
        if tag in drop:
            continue
        field = struct.pack(order + _CODES[kind], *((value, 1) if kind == RATIONAL else (value,)))
        table += struct.pack(order + ("HHQ" if big else "HHI"), tag, kind, 1) + field.ljust(field_bytes, b"\0")
    table += struct.pack(order + ("Q" if big else "I"), 0)  # no next page
    mark = b"II" if order == "<" else b"MM"
    header = mark + (struct.pack(order + "HHHQ", 43, 8, 0, ifd_at) if big else struct.pack(order + "HI", 42, ifd_at))
    return header + pixels + b"\0" * (len(pixels) % 2) + table


def _peak_bytes(call) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- memory per request (finding 5) ------------------------------------------------------------------------
def test_16_bit_to_8_bit_is_the_old_formula_for_every_value_without_a_float_copy():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    old = (values.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)  # what convert_image did before
    np.testing.assert_array_equal(convert_image(values, "gray")[:, :, 0], old)
    rng = np.random.default_rng(0)
    bgra = rng.integers(0, 65536, (40, 30, 4), dtype=np.uint16)
    old8 = (bgra.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)[:, :, :3]
    np.testing.assert_array_equal(convert_image(bgra, "rgb"), cv2.cvtColor(old8, cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(convert_image(bgra, "gray")[:, :, 0], cv2.cvtColor(old8, cv2.COLOR_BGR2GRAY))


def test_decoded_bytes_are_bounded_from_the_header_not_the_pixel_count():
    """A 194 KB 16-bit RGBA PNG of 25 MP took 955 MB: the cap counted pixels. The bound is width x height x
    channels x bytes per sample, at most 3 bytes per pixel of --max-pixels, read before decoding."""
    h, w = 80, 100
    rgba16 = (np.indices((h, w)).sum(0)[:, :, None] * np.array([300, 200, 100, 65])).astype(np.uint16)
    png16 = cv2.imencode(".png", rgba16)[1].tobytes()
    header = read_header(png16, "png")
    assert (header.width, header.height, header.channels, header.bytes_per_sample) == (w, h, 4, 2)
    assert header.decoded_bytes == w * h * 4 * 2 == 64_000
    assert max_decoded_bytes(20_000) == 60_000  # 8 000 pixels are within 20 000; 64 000 bytes are not within 60 000
    with pytest.raises(IntakeError) as refused:
        decode_bytes(png16, "gray", source="part.png", max_pixels=20_000)
    assert (refused.value.kind, refused.value.status) == ("too_large", 413)
    assert str(refused.value) == ("part.png: a 100x80 16-bit 4-channel PNG takes 0 MB decoded; the station decodes "
                                  "at most 0 MB per image (3 bytes a pixel of --max-pixels 20000)")
    assert decode_bytes(png16, "gray", max_pixels=21_334).image.shape == (h, w, 1)  # 64 002 bytes allowed
    gray8 = cv2.imencode(".png", rgba16[:, :, 0].astype(np.uint8))[1].tobytes()
    assert read_header(gray8, "png").decoded_bytes == 8_000
    assert decode_bytes(gray8, "gray", max_pixels=20_000).image.shape == (h, w, 1)
    with pytest.raises(IntakeError, match=r"a 100x80 PNG \(0 MP\); the station decodes at most 0.007 MP per image"):
        decode_bytes(gray8, "gray", max_pixels=7_000)


@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_decoding_a_16_bit_rgba_png_peaks_near_its_decoded_size(channels):
    """Measured with tracemalloc (numpy and OpenCV's arrays): the decoded image, its 8-bit conversion and the
    output, never float copies (before: 3 float32 copies, 48 bytes a pixel on top of the 8 decoded)."""
    h, w = 1000, 1200
    grad = (np.indices((h, w)).sum(0) * 29).astype(np.uint16)
    png = cv2.imencode(".png", np.dstack([grad, grad // 2, 65535 - grad, grad // 3]))[1].tobytes()
    decoded = read_header(png, "png").decoded_bytes
    intake, peak = _peak_bytes(lambda: decode_bytes(png, channels))
    assert intake.image.shape == (h, w, 1 if channels == "gray" else 3)
    assert decoded == h * w * 8
    assert peak <= decoded + 7 * h * w + 1_000_000, (peak, decoded)  # decoded + 4 (8-bit BGRA) + 3 (RGB) per pixel


# -- TIFF sizes (finding 6) ------------------------------------------------------------------------------
@pytest.mark.parametrize("width_type,big", [(SHORT, False), (LONG, False), (SSHORT, False), (SLONG, False),
                                            (LONG8, True), (SLONG, True)],
                         ids=["SHORT", "LONG", "SSHORT", "SLONG", "BigTIFF-LONG8", "BigTIFF-SLONG"])
def test_a_tiff_declaring_256_mp_is_refused_whatever_type_its_width_has(width_type, big):
    """Width typed SLONG was skipped by the size check, and a 256 MP TIFF decoded despite the cap."""
    bomb = tiff_bytes(16_000, 16_000, pixels=b"\0" * 4096, width_type=width_type, big=big)
    header = read_header(bomb, "tiff")
    assert (header.width, header.height) == (16_000, 16_000)
    with pytest.raises(IntakeError) as refused:
        decode_bytes(bomb, "gray", source="bomb.tif")
    assert (refused.value.kind, refused.value.status) == ("too_large", 413)
    assert str(refused.value).startswith("bomb.tif: a 16000x16000 TIFF (256 MP); the station decodes at most 200 MP")


@pytest.mark.parametrize("width_type,order", [(SHORT, "<"), (SLONG, "<"), (SLONG, ">"), (SSHORT, ">")])
def test_a_small_tiff_decodes_whatever_type_its_width_has(width_type, order):
    tif = tiff_bytes(24, 10, width_type=width_type, order=order)
    image = decode_bytes(tif, "gray").image
    assert image.shape == (10, 24, 1) and image[3, 5, 0] == 8 and image[9, 23, 0] == 32


@pytest.mark.parametrize("case,data,reason", [
    ("no width tag", tiff_bytes(24, 10, drop=(256,)), "the TIFF does not say its width (tag 256)"),
    ("width typed RATIONAL", tiff_bytes(24, 10, width_type=RATIONAL), "TIFF tag 256 has type 5, not an integer"),
    ("a negative SLONG width", tiff_bytes(-24, 10, pixels=b"\0" * 240, width_type=SLONG), "TIFF tag 256 is negative (-24)"),
])
def test_a_tiff_whose_size_cannot_be_read_is_refused_not_decoded(case, data, reason):
    from deploy.serve.intake import decodes_inline

    assert decodes_inline(data) is False  # before: an unknown size was decoded on the event loop
    with pytest.raises(IntakeError) as refused:
        decode_bytes(data, "gray", source="x.tif")
    assert refused.value.kind == "corrupt_image"
    assert str(refused.value) == f"x.tif: the TIFF header does not say the image's size ({reason}); refused before decoding"


def test_a_tiff_cut_short_is_truncated_wherever_it_is_cut():
    """libtiff writes the tag table last: a TIFF still being written points past its end (deploy watch waits)."""
    whole = tiff_bytes(24, 10)
    assert decode_bytes(whole, "gray").image.shape == (10, 24, 1)
    for cut in (100, len(whole) - 30, len(whole) - 1):
        with pytest.raises(IntakeError) as refused:
            decode_bytes(whole[:cut], "gray")
        assert refused.value.kind == "truncated_image", cut
    unlinked = whole[:4] + b"\0\0\0\0" + whole[8:]  # the header's page offset not filled in yet
    with pytest.raises(IntakeError, match="first page is not written yet") as refused:
        decode_bytes(unlinked, "gray")
    assert refused.value.kind == "truncated_image"
    strip_past_the_end = tiff_bytes(24, 10, strip_bytes=100_000)  # its strip would end beyond the file
    with pytest.raises(IntakeError, match="the TIFF data ends early") as refused:
        decode_bytes(strip_past_the_end, "gray")
    assert refused.value.kind == "truncated_image"


# -- PNG and JPEG ends (finding 8) ---------------------------------------------------------------------------
def test_a_png_with_bytes_after_iend_is_accepted():
    """Some camera software appends a trailer after IEND; libpng ignores it. It was refused as cut short."""
    gray = (np.indices((30, 40)).sum(0) * 3).astype(np.uint8)
    png = cv2.imencode(".png", gray)[1].tobytes()
    for trailer in (b"\0" * 7, b"camera-trailer v1.2 serial 0042\n"):
        np.testing.assert_array_equal(decode_bytes(png + trailer, "gray").image[:, :, 0], gray)
    with pytest.raises(IntakeError) as cut:
        decode_bytes(png[: len(png) - 20], "gray")
    assert cut.value.kind == "truncated_image"


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.indices((h, w)).sum(0) * 0.4 + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_a_cut_jpeg_with_an_end_marker_appended_is_truncated(colour):
    """libjpeg decodes the missing blocks as flat grey without an error: the part was decided on half a picture."""
    gray = _photo(240, 320)
    image = cv2.merge([gray, gray // 2, 255 - gray]) if colour else gray
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    assert decode_bytes(jpeg, "rgb").image.shape == (240, 320, 3)
    for fraction in (0.3, 0.6, 0.9):
        cut = jpeg[: int(len(jpeg) * fraction)] + b"\xff\xd9"
        assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # OpenCV says nothing
        with pytest.raises(IntakeError) as refused:
            decode_bytes(cut, "rgb", source="cut.jpg")
        assert refused.value.kind == "truncated_image", fraction
        assert str(refused.value).startswith("cut.jpg: the JPEG's scan data ends before its last block")


def test_a_complete_jpeg_whose_corner_is_flat_grey_is_accepted():
    """The check above looks further only at a flat 128 corner; a real picture with one is no cut JPEG."""
    gray = _photo(96, 128)
    gray[48:, 64:] = 128
    jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.all(decoded[-8:, -8:] == 128)  # the case the check looks further at
    np.testing.assert_array_equal(decode_bytes(jpeg, "gray").image[:, :, 0], decoded)
