"""The enricher's pure parts: the models on known images, the version bookkeeping, the backfill's
choice of documents, and the announcement a backfill sends."""
from __future__ import annotations

import numpy as np
import pytest

from enricher.backfill import announcement, due_filter, is_due
from enricher.faces import FACES_VERSION, as_bgr, detect_faces, face_fields, fit_longest
from enricher.text import TEXT_VERSION, read_text, text_fields
from enricher.work import DecodeLimits, decode_upright, run_models
from enricher.writer import same_etag, with_version
from fixtures.images import encode
from imgpipe.errors import MessageError
from imgpipe.indexed import parse_indexed

LIMITS = DecodeLimits(50 * 2**20, 100_000_000, 512 * 2**20)


def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[:, :, ::-1].copy()


def printed(text: str, size: int = 40, light_on_dark: bool = False) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", size)
    width = int(font.getlength(text)) + 2 * size
    image = Image.new("RGB", (width, 3 * size), "black" if light_on_dark else "white")
    ImageDraw.Draw(image).text((size, size), text, fill="white" if light_on_dark else "black", font=font)
    return np.asarray(image)[:, :, ::-1].copy()


def test_the_astronauts_face_is_found_at_its_place_at_every_size():
    for size in (160, 240, 320):
        faces = detect_faces(astronaut(), size=size)
        assert len(faces) == 1
        face = faces[0]
        assert 0.3 < face.x + face.w / 2 < 0.5 and 0.15 < face.y + face.h / 2 < 0.35 and face.confidence > 0.5


def test_a_face_free_picture_has_no_faces_and_its_fields_say_so():
    import skimage.data

    assert face_fields(detect_faces(skimage.data.coffee()[:, :, ::-1].copy())) == \
        {"faces": 0, "face_boxes": [], "faces_version": FACES_VERSION}


def test_boxes_are_fractions_of_the_image_whatever_its_size():
    small = detect_faces(fit_longest(astronaut(), 256))
    large = detect_faces(astronaut())
    assert abs(small[0].x - large[0].x) < 0.03 and abs(small[0].w - large[0].w) < 0.03


def test_grayscale_and_alpha_images_are_given_three_channels():
    assert as_bgr(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_bgr(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)


@pytest.mark.parametrize("light_on_dark", [False, True])
def test_printed_text_is_read_with_its_box(light_on_dark):
    lines = read_text(printed("Quarterly report 2026", light_on_dark=light_on_dark))
    assert [line.text for line in lines] == ["Quarterly report 2026"]
    x, y, w, h = lines[0].box
    assert 0 < x < 0.2 and 0.2 < y < 0.5 and w > 0.7 and 0.1 < h < 0.6


def test_text_fields_count_characters_not_spaces():
    fields = text_fields(read_text(printed("ab cd")))
    assert fields["text"] == "ab cd" and fields["text_chars"] == 4 and fields["text_version"] == TEXT_VERSION
    assert text_fields([]) == {"text": "", "text_lines": [], "text_chars": 0, "text_version": TEXT_VERSION}


def test_models_run_on_encoded_bytes_and_a_broken_image_is_a_message_error():
    output = run_models(("faces", "text"), encode(astronaut(), ".jpg"), LIMITS)
    assert output.fields["faces"] == 1 and output.fields["text"] == "" and output.fields["text_chars"] == 0
    assert set(output.cpu_seconds) == {"faces", "text"}
    text = run_models(("text",), encode(printed("HELLO"), ".png"), LIMITS)
    assert text.fields["text"] == "HELLO" and "faces" not in text.fields and set(text.cpu_seconds) == {"text"}
    with pytest.raises(MessageError) as raised:
        run_models(("text",), b"\x89PNG\r\n\x1a\n broken", LIMITS)
    assert raised.value.stage in ("guard", "decode")


def test_decoding_keeps_the_display_orientation_and_caps_the_size():
    image = decode_upright(encode(np.zeros((100, 400, 3), np.uint8), ".png"), 200, LIMITS)
    assert image.shape[:2] == (50, 200)


def test_enrichment_version_only_when_every_model_is_current():
    versions = {"faces_version": 1, "text_version": 1}
    assert with_version({"faces_version": 1}, {"text_version": 1}, versions, 7)["enrichment_version"] == 7
    assert "enrichment_version" not in with_version({"faces_version": 1}, {}, versions, 7)
    assert "enrichment_version" not in with_version({"faces_version": 1}, {"text_version": 0}, versions, 7)


def test_etags_compare_with_or_without_quotes():
    assert same_etag('"abc"', "abc") and not same_etag("abc", "abd")


def test_the_backfill_chooses_documents_lacking_the_current_version():
    versions = {"enrichment_version": 2}
    assert due_filter(versions) == "enrichment_version NOT EXISTS OR enrichment_version != 2"
    assert is_due({"id": "a"}, versions) and is_due({"enrichment_version": 1}, versions)
    assert not is_due({"enrichment_version": 2}, versions)


def test_a_backfill_announcement_is_a_valid_indexed_announcement():
    doc = {"id": "x", "bucket": "images", "key": "raw/a.jpg", "etag": "e", "event_time": "2026-01-01T00:00:00Z",
           "thumbnail_key": "processed/t.jpg", "grayscale_key": "processed/g.jpg", "width": 10, "height": 5,
           "enrichment_version": None}
    parsed = parse_indexed(announcement(doc).to_json())
    assert (parsed.id, parsed.key, parsed.etag, parsed.thumbnail_key, parsed.width) == \
        ("x", "raw/a.jpg", "e", "processed/t.jpg", 10)


def test_the_matching_line_of_a_hit_is_found_and_its_words_marked():
    from visualize.search import MATCH_END, MATCH_START, matching_lines, shown_match

    hit = {"_formatted": {"text": f"ACME Ltd\nTotal {MATCH_START}invoice{MATCH_END} 42\nthanks"}}
    assert matching_lines(hit) == [("Total invoice 42", [("Total ", False), ("invoice", True), (" 42", False)])]
    assert shown_match(hit) == "Total [invoice] 42"
    assert shown_match({"_formatted": {"text": "no match"}}) == "" and shown_match({}) == ""


def test_the_benchs_measures_mean_what_they_say():
    import random

    from bench.enrichment import CANVAS, cer, composite, face_free_images, iou

    assert cer("invoice 42", "invoice 42") == 0 and cer("abcd", "abed") == 0.25 and cer("ab", "") == 1.0
    assert cer("two  words", "two words") == 0
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(1 / 3)
    rng = random.Random(1)
    background = face_free_images(1, rng)[0]
    assert background.shape[:2] == (CANVAS[1], CANVAS[0])
    for px in (24, 96, 0):
        item = composite(background, px, rng)
        x, y, w, h = item.box
        assert 0 <= x and 0 <= y and x + w <= CANVAS[0] + 1 and y + h <= CANVAS[1] + 1
        assert px == 0 or abs(w - px) < 1
