"""Hostile text stays inert: a key holding terminal escapes, newlines or bidi overrides is shown
escaped in log lines, tables and search results, never acted on by the terminal."""
from __future__ import annotations

import pytest

from fixtures.images import encode, gradient_pattern
from imgpipe.cli import printable
from tests.helpers import all_documents, run_script, upload

# What an S3 key can hold and S3 lists back exactly: C1 controls (\x9b is CSI, the one-byte form of
# ESC [), newlines, carriage returns, bidi overrides, zero-width marks. (C0 controls such as ESC
# are not XML characters: the local S3 server lists them as U+FFFD; printable() is tested on them
# directly below.)
EVIL = "evil\x9b2J \u202egpj.exe\nINFO fake log line\r\t\u200b.jpg"


def test_printable_escapes_every_control_and_formatting_character():
    assert printable(EVIL) == "evil\\x9b2J \\u202egpj.exe\\nINFO fake log line\\r\\t\\u200b.jpg"
    assert printable("evil\x1b[2J\x1b]0;pwned\x07") == "evil\\x1b[2J\\x1b]0;pwned\\x07"
    assert printable("a\nINFO forged") == "a\\nINFO forged"
    assert printable("a\tb\x00c\x9bd\u200be") == "a\\tb\\x00c\\x9bd\\u200be"
    assert printable("日本の写真 📷 café") == "日本の写真 📷 café"
    assert printable("two\nlines\x1b", keep_newlines=True) == "two\nlines\\x1b"


def assert_inert(text: str) -> None:
    assert not any(char in text for char in "\x9b\u202e\u200b\r"), repr(text[-500:])
    assert not any(line.startswith("INFO fake log line") for line in text.splitlines())


@pytest.mark.integration
def test_a_hostile_key_is_escaped_in_logs_tables_and_search(settings, tmp_path):
    [key] = upload(settings, {EVIL: encode(gradient_pattern(64, 48), ".jpg")})
    produced = run_script("producer/image_producer.py", ["--no-progress", "-v"], settings)
    consumed = run_script("consumer/image_consumer.py", ["--max-idle-seconds", "3", "--no-progress", "-v"], settings)
    assert produced.returncode == consumed.returncode == 0, consumed.stderr[-2000:]
    assert [d["key"] for d in all_documents(settings)] == [key]  # stored exactly, shown escaped

    searched = run_script("visualize/search.py", ["evil"], settings)
    shown = run_script("visualize/report.py", ["--previews", "0", "--out", str(tmp_path)], settings)
    assert searched.returncode == shown.returncode == 0, searched.stderr + shown.stderr
    for output in (produced.stderr, consumed.stderr, searched.stdout, shown.stdout):
        assert_inert(output)
    assert "evil\\x9b2J \\u202egpj.exe\\nINFO fake log line\\r\\t\\u200b.jpg" in searched.stdout
    assert "evil\\x9b2J" in shown.stdout
