"""The dashboard with the enricher's fields: the search finds images by the words read in them
and shows the matching line; the image page lists the recognised lines and draws the face boxes
over the thumbnail (SVG in fractions of the image, allowed by the page's CSP: no inline style)."""
from __future__ import annotations

import random

import pytest

from fixtures.documents import sample_document
from tests.test_dashboard import client_for, get_json
from tests.test_visualize_data import index_documents

pytestmark = pytest.mark.integration


@pytest.fixture
def enriched(settings, tmp_path):
    rng = random.Random(7)
    docs = [sample_document(i, rng) for i in range(3)]
    docs[0].update(text="ACME Ltd\nInvoice 4711 for zebrafish food\nThank you", text_chars=40,
                   text_lines=[{"text": t, "box": [0.1, 0.1 * n, 0.5, 0.05], "confidence": 0.98}
                               for n, t in enumerate(["ACME Ltd", "Invoice 4711 for zebrafish food", "Thank you"])])
    docs[1].update(faces=2, face_boxes=[{"x": 0.1, "y": 0.2, "w": 0.25, "h": 0.3, "confidence": 0.93},
                                        {"x": 0.6, "y": 0.2, "w": 0.2, "h": 0.25, "confidence": 0.71}],
                   text="", text_lines=[], text_chars=0)
    index_documents(settings, docs)
    return docs, client_for(settings, tmp_path)


def test_search_finds_an_image_by_a_word_in_it_and_shows_the_line(enriched):
    docs, client = enriched
    page = get_json(client, "/", q="zebrafish", sort="")
    assert [h["id"] for h in page["hits"]] == [docs[0]["id"]]
    assert page["hits"][0]["text_match"] == [["Invoice 4711 for ", False], ["zebrafish", True], [" food", False]]
    html = client.get("/", query_string={"q": "zebrafish", "sort": ""}).get_data(as_text=True)
    assert '<span class="text-match">Invoice 4711 for <mark>zebrafish</mark> food</span>' in html


def test_the_image_page_lists_the_lines_and_draws_the_face_boxes(enriched):
    docs, client = enriched
    text_page = get_json(client, f"/image/{docs[0]['id']}")
    assert [line["text"] for line in text_page["text_lines"]] == ["ACME Ltd", "Invoice 4711 for zebrafish food",
                                                                  "Thank you"]
    html = client.get(f"/image/{docs[0]['id']}").get_data(as_text=True)
    assert '<ol class="text-lines" id="text-lines">' in html and "<li>Invoice 4711 for zebrafish food" in html
    assert 'id="face-boxes"' not in html

    faces_html = client.get(f"/image/{docs[1]['id']}").get_data(as_text=True)
    assert faces_html.count('<rect class="face"') == 2
    assert '<rect class="face" x="0.1" y="0.2" width="0.25" height="0.3">' in faces_html
    assert "thumbnail · 2 faces" in faces_html and 'id="text-lines"' not in faces_html


def test_the_status_page_shows_the_enrichers_lag_per_lane_and_its_counts(settings, tmp_path):
    from prometheus_client import start_http_server

    from imgpipe.metrics import EnricherMetrics
    from tests.dashboard_data import free_port

    metrics = EnricherMetrics()
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        metrics.messages.labels("live").inc(10)
        metrics.enriched.labels("live").inc(8)
        metrics.skipped.labels("missing").inc(2)
        metrics.lag.labels("live").set(3)
        metrics.lag.labels("backfill").set(1200)
        metrics.enrichment_lag.observe(2.5)
        metrics.last_lag_seconds.set(2.5)
        client = client_for(settings, tmp_path, metrics_urls=(f"http://127.0.0.1:{port}/metrics",))
        endpoint = get_json(client, "/status")["endpoints"][0]
        totals = {(c["what"], c["label"]): c["total"] for c in endpoint["counters"]}
        assert totals[("documents enriched", "lane=live")] == 8 and totals[("enrichments skipped", "reason=missing")] == 2
        assert endpoint["lag"] == [["backfill lane", "", 1200.0], ["live lane", "", 3.0]]
        assert endpoint["enrichment_lag_seconds"] == 2.5
        assert [h["what"] for h in endpoint["histograms"]] == ["event → enriched (enrichment lag)"]
        html = client.get("/status").get_data(as_text=True)
        assert "Enrichment lag (event to enriched, last document): 2.5 s." in html
    finally:
        server.shutdown()
