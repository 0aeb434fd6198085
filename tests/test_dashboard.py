"""The dashboard's application against the real stack, driven through Flask's test client: search
with filters and sort, images only by document id from under S3_PROCESSED_PREFIX, every field of
one image and its look-alikes, the charts from the same counts as report.py, the latest dead
letters, the consumer's status from a real metrics endpoint; escaping, bad input as a 400 page,
and no key in any answer. tests/test_dashboard_browser.py drives a real browser."""
from __future__ import annotations

import io
import re
import subprocess
import time

import pytest
from PIL import Image

from imgpipe.document import FIELDS
from tests import dashboard_data
from tests.test_visualize_data import PYTHON, REPO, search_only
from visualize.web import Options, create_app

pytestmark = pytest.mark.integration


def client_for(settings, tmp_path, **options):
    """A test client of the app reading with the search-only key, with no MapReduce output or
    consumer summary unless given (never the working directory's out/)."""
    defaults = {"counts_ttl_seconds": 0, "mapreduce_dir": tmp_path / "no-mapreduce",
                "consumer_summary": tmp_path / "no-summary.json"}
    return create_app(search_only(settings), Options(**{**defaults, **options})).test_client()


@pytest.fixture
def shown(settings, tmp_path):
    """(DashboardIndex, test client)."""
    return dashboard_data.build(settings), client_for(settings, tmp_path)


def get_json(client, path: str, status: int = 200, **params):
    response = client.get(path, query_string={**params, "format": "json"})
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_json()


def test_search_filters_sorts_and_links_each_thumbnail(shown):
    data, client = shown
    page = get_json(client, "/", filter="faces > 0", sort="size_kb:desc")
    expected = sorted((d for d in data.docs if d["faces"] > 0), key=lambda d: -d["size_kb"])
    assert [h["id"] for h in page["hits"]] == [d["id"] for d in expected][:24]
    assert page["estimated_total_hits"] == len(expected)
    assert all(h["thumbnail"] == f"/image/{h['id']}/thumbnail.jpg" for h in page["hits"])

    jpeg = get_json(client, "/", image_format="jpeg", sort="timestamp:asc")
    assert [h["id"] for h in jpeg["hits"]] == [d["id"] for d in data.docs if d["format"] == "jpeg"][:24]
    words = get_json(client, "/", q="photo_00007", sort="")
    assert words["hits"][0]["file_name"] == data.docs[7]["file_name"] == "photo_00007.png"

    html = client.get("/", query_string={"filter": "faces > 0", "sort": "size_kb:desc"}).get_data(as_text=True)
    assert html.count('<li class="card">') == len(expected)
    assert f'src="/image/{expected[0]["id"]}/thumbnail.jpg"' in html
    assert 'value="faces &gt; 0"' in html  # the form keeps what was asked, escaped


@pytest.mark.parametrize("params, message", [
    ({"filter": "faces >> 2"}, "invalid filter:"),
    ({"filter": "nosuchfield = 3"}, "invalid filter:"),
    ({"sort": "sha256:desc"}, "cannot sort by 'sha256:desc'"),
    ({"page": "many"}, "page must be a whole number"),
    ({"page": "100"}, "MeiliSearch returns the first 1,000 hits"),
    ({"image_format": "exe"}, "no image has the format 'exe'"),
])
def test_a_bad_search_is_a_400_page_with_the_reason(shown, params, message):
    _, client = shown
    response = client.get("/", query_string=params)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "<h1>400 · Bad request</h1>" in html
    assert message.replace("'", "&#39;") in html
    assert message in get_json(client, "/", 400, **params)["message"]


def test_images_are_served_by_document_id_from_the_processed_prefix_only(shown, settings):
    data, client = shown
    doc = data.docs[0]
    response = client.get(f"/image/{doc['id']}/thumbnail.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.data == data.thumbnails[doc["id"]]
    gray = client.get(f"/image/{doc['id']}/grayscale.jpg")
    assert gray.status_code == 200 and Image.open(io.BytesIO(gray.data)).size == (128, 96)

    # The forged document names an object outside the prefix, and a path climbing out of it: never served.
    assert client.get(f"/image/{data.forged['id']}/thumbnail.jpg").status_code == 404
    assert client.get(f"/image/{data.forged['id']}/grayscale.jpg").status_code == 404
    assert client.get(f"/image/{data.docs[5]['id']}/thumbnail.jpg").status_code == 404  # not in S3
    for path in (f"/image/{doc['id']}/original.jpg", "/image/not-an-id/thumbnail.jpg",
                 f"/image/{'0' * 64}/thumbnail.jpg", f"/image/{doc['id'].upper()}/thumbnail.jpg",
                 f"/image/{doc['id']}%22%20OR%20id%20EXISTS/thumbnail.jpg"):
        assert client.get(path).status_code == 404, path
    # A key is not something the browser can ask for.
    assert client.get("/image/thumbnail.jpg", query_string={"key": doc["thumbnail_key"]}).status_code == 404


def test_one_image_shows_every_field_both_versions_and_its_look_alikes(shown):
    data, client = shown
    doc = data.docs[0]
    page = get_json(client, f"/image/{doc['id']}")
    # The core's fields in their order, then what the enrichment stage merged in (faces).
    assert list(page["document"]) == [*FIELDS, "faces"]
    assert page["document"] == {k: v for k, v in doc.items() if k in FIELDS or k == "faces"}
    assert page["similar"][0]["id"] == data.docs[1]["id"]  # its near twin first
    assert doc["id"] not in [h["id"] for h in page["similar"]]
    assert 0.99 < page["similar"][0]["likeness"] <= 1.0
    html = client.get(f"/image/{doc['id']}").get_data(as_text=True)
    assert f'src="/image/{doc["id"]}/thumbnail.jpg"' in html and f'src="/image/{doc["id"]}/grayscale.jpg"' in html
    for name in FIELDS:
        assert f"<th>{name}</th>" in html
    assert client.get(f"/image/{'f' * 64}").status_code == 404


def test_without_descriptors_the_detail_page_says_so(settings, tmp_path):
    data = dashboard_data.build(settings, with_vectors=False)
    client = client_for(settings, tmp_path)
    page = get_json(client, f"/image/{data.docs[0]['id']}")
    assert page["similar"] == [] and "descriptor" in page["similar_message"]


def test_a_hostile_key_is_inert_on_every_page(shown, settings):
    data, client = shown
    doc = data.hostile
    pages = [client.get(f"/image/{doc['id']}"), client.get("/", query_string={"q": "script"}),
             client.get("/", query_string={"filter": f"id = \"{doc['id']}\""})]
    # file_name is the key after its last slash, the one in </script>.
    assert doc["file_name"] == 'script>\x1b[2J\u202egnp.exe\'"&.png'
    for response in pages:
        html = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "<script" not in html and "\x1b" not in html and "\u202e" not in html
        assert "script&gt;\\x1b[2J\\u202egnp.exe&#39;&#34;&amp;.png" in html
    detail = pages[0].get_data(as_text=True)
    assert "&lt;script&gt;alert(&#34;key&#34;)&lt;/script&gt;\\x1b[2J\\u202egnp.exe&#39;&#34;&amp;.png" in detail
    assert client.get(f"/image/{doc['id']}/thumbnail.jpg").data == data.thumbnails[doc["id"]]
    # The form echoes hostile input escaped too.
    echoed = client.get("/", query_string={"q": '"><script>x</script>\x1b'}).get_data(as_text=True)
    assert "<script>x" not in echoed and "&#34;&gt;&lt;script&gt;x&lt;/script&gt;\\x1b" in echoed


def test_charts_and_totals_come_from_the_same_counts_as_visualize(shown, settings):
    from visualize.aggregates import from_index
    from visualize.tables import totals

    data, client = shown
    page = get_json(client, "/charts")
    counts = from_index(search_only(settings), settings.meili_index)
    assert page["counts"] == counts.as_json() and page["images"] == len(data.docs)
    assert page["totals"] == [list(row) for row in totals(counts)]
    assert [c["name"] for c in page["charts"]] == ["size_distribution", "processing_hours", "formats", "faces"]
    for chart in page["charts"]:
        png = client.get(chart["png"])
        assert png.status_code == 200 and png.mimetype == "image/png"
        assert Image.open(io.BytesIO(png.data)).size == (900, 500)
        assert chart["source"].startswith(f"MeiliSearch facets of index '{settings.meili_index}'")
    assert client.get("/charts/mapreduce_summary.png").status_code == 404  # no MapReduce output here
    assert client.get("/charts/anything.png").status_code == 404


def test_charts_with_mapreduce_output_add_its_chart(shown, settings, tmp_path):
    from tests.test_visualize import write_summary

    write_summary(tmp_path / "mr")
    client = client_for(settings, tmp_path, mapreduce_dir=tmp_path / "mr")
    page = get_json(client, "/charts")
    assert page["charts"][-1]["name"] == "mapreduce_summary"
    assert client.get("/charts/mapreduce_summary.png").status_code == 200


def test_dead_letters_are_the_latest_newest_first_with_their_reasons(shown, settings):
    _, client = shown
    letters = [(f"{settings.s3_raw_prefix}broken_{i}.jpg", "decode", f"not an image ({i})") for i in range(6)]
    letters.append((f"{settings.s3_raw_prefix}<b>bold</b>\x1b[31m.jpg", "guard", "over MAX_IMAGE_PIXELS <i>x</i>\u202e"))
    dashboard_data.write_dead_letters(settings, letters)
    page = get_json(client, "/dead-letters")
    assert [row["key"] for row in page["dead_letters"]] == [key for key, _, _ in reversed(letters)]
    assert page["dead_letters"][0]["stage"] == "guard" and page["stages"] == {"guard": 1, "decode": 6}
    latest = get_json(client, "/dead-letters", limit=3)["dead_letters"]
    assert [row["reason"] for row in latest] == ["over MAX_IMAGE_PIXELS <i>x</i>\u202e", "not an image (5)",
                                                 "not an image (4)"]
    html = client.get("/dead-letters").get_data(as_text=True)
    assert "<b>bold" not in html and "&lt;b&gt;bold&lt;/b&gt;\\x1b[31m.jpg" in html
    assert "&lt;i&gt;x&lt;/i&gt;\\u202e" in html and "\u202e" not in html
    assert client.get("/dead-letters", query_string={"limit": "100000"}).status_code == 400


def test_dead_letters_that_do_not_arrive_in_time_are_an_outage_not_none(settings, tmp_path, monkeypatch):
    """The reader stops after DEAD_LETTERS_READ_SECONDS without a message (a busy broker's first
    fetch can take that long); when the topic holds letters, the page must not say "no dead
    letters". The read coming back empty is forced here; the topic and its offsets are real."""
    from imgpipe import kafka

    dashboard_data.write_dead_letters(settings, [(f"{settings.s3_raw_prefix}a.jpg", "decode", "not an image")])
    client = client_for(settings, tmp_path)
    assert get_json(client, "/dead-letters")["stages"] == {"decode": 1}
    monkeypatch.setattr(kafka, "read_messages", lambda *args, **kwargs: [])
    response = client.get("/dead-letters", query_string={"format": "json"})
    assert response.status_code == 503
    assert "none of its latest 1 message(s) arrived within 15 s" in response.get_json()["message"]


def test_no_dead_letter_topic_yet_is_a_message(settings, tmp_path):
    from imgpipe import kafka

    kafka.delete_topics(settings, [settings.kafka_dead_letter_topic])
    client = client_for(settings, tmp_path)
    response = client.get("/dead-letters")
    assert response.status_code == 200 and "nothing has been dead-lettered" in response.get_data(as_text=True)


def test_status_reads_the_consumers_metrics_with_rates_and_lag(settings, tmp_path):
    endpoint = dashboard_data.MetricsEndpoint()
    metrics = endpoint.metrics
    try:
        metrics.messages.inc(100)
        metrics.indexed.inc(90)
        metrics.dead_letters.labels(stage="decode").inc(4)
        metrics.set_lag({("image-events", 0): 12, ("image-events", 10): 3, ("image-events", 2): 5})
        metrics.in_flight.set(2)
        for seconds in (0.02, 0.03, 0.2, 0.7):
            metrics.processing.observe(seconds)
        unreachable = f"http://127.0.0.1:{dashboard_data.free_port()}/metrics"
        client = client_for(settings, tmp_path, metrics_urls=(endpoint.url, unreachable))
        first = get_json(client, "/status")["endpoints"]
        assert first[1]["error"].startswith(f"cannot read {unreachable}:")
        consumer = first[0]
        assert consumer["error"] == "" and consumer["rate_seconds"] is None
        totals = {(c["what"], c["label"]): c["total"] for c in consumer["counters"]}
        assert totals[("messages consumed", "")] == 100 and totals[("dead letters", "stage=decode")] == 4
        assert totals[("dead letters", "stage=guard")] == 0 and totals[("retries", "service=s3")] == 0
        assert consumer["lag"] == [["image-events", "0", 12.0], ["image-events", "2", 5.0],
                                   ["image-events", "10", 3.0]]
        assert consumer["total_lag"] == 20 and consumer["in_flight"] == 2
        histogram, searchable = consumer["histograms"]
        assert searchable["count"] == 0 and searchable["mean_seconds"] is None
        assert histogram["count"] == 4 and histogram["mean_seconds"] == pytest.approx(0.2375)
        assert 0.01 < histogram["p50_seconds"] <= 0.05 < histogram["p95_seconds"] <= 1.0

        time.sleep(1.2)
        metrics.messages.inc(60)
        again = get_json(client, "/status")["endpoints"][0]
        rate = next(c["per_second"] for c in again["counters"] if c["what"] == "messages consumed")
        assert again["rate_seconds"] >= 1.0 and rate == pytest.approx(60 / again["rate_seconds"])
        html = client.get("/status").get_data(as_text=True)
        assert "Lag: 20 messages" in html and '<meta http-equiv="refresh" content="10">' in html
    finally:
        endpoint.close()


def test_status_without_a_metrics_url_says_how_to_get_one(settings, tmp_path):
    html = client_for(settings, tmp_path).get("/status").get_data(as_text=True)
    assert "--metrics-port 9464" in html and "--metrics-url http://127.0.0.1:9464/metrics" in html


def test_no_key_reaches_any_page_and_pages_refuse_other_hosts(shown, settings):
    data, client = shown
    secrets = dashboard_data.keys_of(settings)
    assert len(secrets) >= 3
    doc = data.docs[0]
    paths = ["/", "/?q=photo", "/?filter=faces%20%3E%3E", f"/image/{doc['id']}", f"/image/{data.hostile['id']}",
             "/charts", "/dead-letters", "/status", "/nope", f"/image/{'0' * 64}", "/static/style.css"]
    for path in paths:
        for suffix in ("", "&format=json" if "?" in path else "?format=json"):
            response = client.get(path + suffix)
            body = response.get_data(as_text=True)
            assert not [s for s in secrets if s in body], path + suffix
            assert "Traceback" not in body
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 400
    assert client.get("/", headers={"Host": "127.0.0.1:8888"}).status_code == 200


def test_an_unreachable_meilisearch_is_a_503_page_not_a_crash(settings):
    down = search_only(settings).with_overrides(meili_url="http://127.0.0.1:9")
    response = create_app(down, Options()).test_client().get("/")
    assert response.status_code == 503
    assert "cannot reach http://127.0.0.1:9" in response.get_data(as_text=True)


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "error: --host 0.0.0.0: the dashboard has no login, so it listens on loopback only"),
    (["--dead-letters", "0"], "error: --dead-letters must be between 1 and 500"),
    (["--metrics-url", "localhost:9464"], "error: --metrics-url must be an http(s) URL"),
])
def test_a_user_mistake_is_one_line_and_exit_2(args, message):
    result = subprocess.run([PYTHON, "visualize/dashboard.py", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_a_taken_port_is_one_line_and_exit_2(settings):
    import socket

    from tests.test_visualize_data import script_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([PYTHON, "visualize/dashboard.py", "--port", str(port)], cwd=REPO,
                                env=script_env(settings), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert re.fullmatch(rf"error: cannot listen on 127\.0\.0\.1:{port}: .+\n", result.stderr)
