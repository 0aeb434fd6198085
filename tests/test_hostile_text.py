"""Hostile text stays inert: a key holding terminal escapes, newlines or bidi overrides is shown
escaped in log lines, tables and search results, never acted on by the terminal."""
from __future__ import annotations

import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe.cli import printable
from tests.helpers import all_documents, run_script, upload

# (No LF: moto's S3 server cannot store a key with one; the printable() test covers it.)
EVIL = "evil\x1b[2J\x1b]0;pwned\x07 \u202egpj.exe\rINFO fake log line\t.jpg"


def test_printable_escapes_every_control_and_formatting_character():
    assert printable(EVIL) == "evil\\x1b[2J\\x1b]0;pwned\\x07 \\u202egpj.exe\\rINFO fake log line\\t.jpg"
    assert printable("a\nINFO forged") == "a\\nINFO forged"
    assert printable("a\tb\x00c\x9bd\u200be") == "a\\tb\\x00c\\x9bd\\u200be"
    assert printable("日本の写真 📷 café") == "日本の写真 📷 café"
    assert printable("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"


def assert_inert(text: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text and "\r" not in text


@pytest.mark.integration
def test_a_hostile_key_is_escaped_in_logs_tables_and_search(settings, tmp_path):
    [key] = upload(settings, {EVIL: encode(gradient_pattern(64, 48), ".jpg")})
    produced = run_script("producer/image_producer.py", ["--no-progress", "-v"], settings)
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "3", "--no-progress", "-v"], settings)
    assert produced.returncode == consumed.returncode == 0, consumed.stderr[-2000:]
    assert [d["key"] for d in all_documents(settings)] == [key]  # stored exactly, shown escaped

    searched = run_script("visualize/search.py", ["evil"], settings)
    shown = run_script("visualize/visualize.py", ["--previews", "0", "--out", str(tmp_path)], settings)
    assert searched.returncode == shown.returncode == 0, searched.stderr + shown.stderr
    for output in (produced.stderr, consumed.stderr, searched.stdout, shown.stdout):
        assert_inert(output)
    assert "evil\\x1b[2J" in searched.stdout and "\\u202egpj.exe\\rINFO fake log line\\t.jpg" in searched.stdout
    assert "evil\\x1b[2J" in shown.stdout
