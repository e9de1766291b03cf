"""Record schema: encode/decode round trips, validation errors, corruption detection, image decoding."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from seedream_jax.data import records


def _png(w=24, h=16, mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _record(**kw) -> records.Record:
    base = dict(key="k/1.png", image=_png(), image_format="png", width=24, height=16,
                captions={"en": {"short": "a cat", "text": 'a sign with the text "OPEN"'},
                          "zh": {"long": "一只猫坐在写着“营业”的牌子旁边"}},
                source="test", scores={"aesthetic": 5.25},
                ocr=[records.OcrBox("OPEN", 0.9, ((1, 2), (10, 2), (10, 6), (1, 6)))],
                spec={"objects": [{"shape": "circle"}]}, meta={"url": "http://example.com/1", "license": "cc-by"})
    base.update(kw)
    return records.Record(**base)


def test_round_trip_keeps_every_field_and_the_image_bytes():
    rec = _record()
    data = records.encode_record(rec)
    back = records.decode_record(data)
    assert back == rec
    assert back.image == rec.image
    assert back.ocr[0].box == ((1.0, 2.0), (10.0, 2.0), (10.0, 6.0), (1.0, 6.0))
    header = records.decode_header(data)
    assert header["v"] == records.SCHEMA_VERSION and header["width"] == 24 and "image" not in header
    assert records.encode_record(back) == data  # deterministic encoding


def test_header_is_utf8_json_after_magic():
    data = records.encode_record(_record())
    assert data[:4] == b"SDR1"
    n = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    assert header["captions"]["zh"]["long"].startswith("一只猫")
    assert data[8 + n:] == _record().image


@pytest.mark.parametrize("change, message", [
    (dict(captions={}), "captions must be"),
    (dict(captions={"english": {"short": "x"}}), "not a language code"),
    (dict(captions={"en": {"title": "x"}}), "caption type 'title'"),
    (dict(captions={"en": {"short": "  "}}), "non-empty string"),
    (dict(width=0), "width must be a positive int"),
    (dict(image_format="gif"), "image_format 'gif'"),
    (dict(image=b""), "image must be non-empty"),
    (dict(scores={"a": float("nan")}), "finite number"),
    (dict(key=""), "key must be a non-empty"),
    (dict(meta={"x": object()}), "not JSON-serialisable"),
])
def test_invalid_records_are_refused_with_the_field_named(change, message):
    with pytest.raises(records.RecordError, match=message):
        records.encode_record(_record(**change))


def test_corruption_and_truncation_are_detected():
    data = bytearray(records.encode_record(_record()))
    flipped = bytes(data[:-5]) + bytes([data[-5] ^ 0xFF]) + bytes(data[-4:])
    with pytest.raises(records.RecordError, match="CRC32"):
        records.decode_record(flipped)
    with pytest.raises(records.RecordError, match="image is"):
        records.decode_record(bytes(data[:-10]))
    with pytest.raises(records.RecordError, match="truncated"):
        records.decode_record(bytes(data[:20]))
    with pytest.raises(records.RecordError, match="not a seedream record"):
        records.decode_record(b"XXXX" + bytes(data[4:]))


def test_newer_schema_version_is_refused():
    data = records.encode_record(_record())
    n = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8:8 + n])
    header["v"] = records.SCHEMA_VERSION + 1
    blob = json.dumps(header).encode()
    with pytest.raises(records.RecordError, match="upgrade"):
        records.decode_record(data[:4] + len(blob).to_bytes(4, "little") + blob + data[8 + n:])


def test_sniff_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    assert records.sniff_format(buf.getvalue()) == "jpeg"
    assert records.sniff_format(_png()) == "png"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="WEBP")
    assert records.sniff_format(buf.getvalue()) == "webp"
    assert records.sniff_format(b"GIF89a....") is None


def test_decode_image_applies_exif_orientation_and_composites_alpha():
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = 255  # white left third
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = records.decode_image(buf.getvalue())
    assert out.shape == (30, 10, 3) and out.dtype == np.uint8
    assert out[:10].mean() > 200 and out[20:].mean() < 50  # the white third is now on top

    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black -> white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    assert (records.decode_image(buf.getvalue()) == 255).all()
