"""`visualize/search.py --similar KEY` end to end: the consumer computes each image's descriptor,
MeiliSearch keeps it in `_vectors`, and resized and re-encoded copies of an image rank above
unrelated images, read with the search-only key."""
from __future__ import annotations

import json

import cv2
import pytest

from fixtures.images import bundled_photo, jpeg, photo_like_pixels
from tests.helpers import run_script, upload

pytestmark = pytest.mark.integration


def test_copies_of_an_image_rank_above_unrelated_images(settings):
    chelsea = bundled_photo("chelsea")  # the cat
    small = cv2.resize(chelsea, (chelsea.shape[1] // 2, chelsea.shape[0] // 2), interpolation=cv2.INTER_AREA)
    objects = {"cat.jpg": jpeg(chelsea, 92), "copies/cat-half.jpg": jpeg(small, 70),
               "copies/cat-low-quality.jpg": jpeg(chelsea, 35), "copies/cat-tiny.png": jpeg(cv2.resize(
                   chelsea, (120, 90), interpolation=cv2.INTER_AREA), 80)}
    objects.update({f"other/photo-{i}.jpg": jpeg(photo_like_pixels(i, 451, 300), 85) for i in range(6)})
    objects.update({f"other/{name}.jpg": jpeg(bundled_photo(name), 85) for name in ("coffee", "astronaut", "rocket")})
    keys = upload(settings, objects)
    assert run_script("producer/image_producer.py", ["--no-progress"], settings).returncode == 0
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "4", "--no-progress"], settings)
    assert consumed.returncode == 0, consumed.stderr[-2000:]

    query = settings.s3_raw_prefix + "cat.jpg"
    found = run_script("visualize/search.py", ["--similar", query, "--json", "--limit", "20"], settings)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    ranked = [hit["key"] for hit in hits]
    assert query not in ranked and sorted(ranked) == sorted(k for k in keys if k != query)
    assert {key.rsplit("/", 1)[-1] for key in ranked[:3]} == {"cat-half.jpg", "cat-low-quality.jpg", "cat-tiny.png"}
    scores = [hit["_rankingScore"] for hit in hits]
    assert scores == sorted(scores, reverse=True) and scores[2] > scores[3]

    table = run_script("visualize/search.py", ["--similar", query, "--limit", "3"], settings)
    assert table.returncode == 0 and "likeness" in table.stdout and "cat-half.jpg" in table.stdout
    missing = run_script("visualize/search.py", ["--similar", "raw/not-there.jpg"], settings)
    assert missing.returncode == 2 and "no image s3://" in missing.stderr and "Traceback" not in missing.stderr
    both = run_script("visualize/search.py", ["cat", "--similar", query], settings)
    assert both.returncode == 2 and "takes no query words" in both.stderr
