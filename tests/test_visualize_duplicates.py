"""visualize.py's duplicates table and picture, from the duplicates job's output: the groups'
members resolved through the index with the search-only key, the bytes a clean-up would free."""
from __future__ import annotations

import pytest

from tests.test_visualize_data import index_documents, make_doc, script_env, search_only, upload_thumbnails
from visualize import duplicates

pytestmark = pytest.mark.integration


def test_groups_become_a_table_with_reclaimable_bytes_and_a_picture(settings, tmp_path):
    import subprocess
    import sys

    from imgpipe.settings import REPO_ROOT
    from tests.test_visualize import png_size

    docs = [make_doc(i, settings, size_kb=100.0 + i) for i in range(8)]
    index_documents(settings, docs)
    upload_thumbnails(settings, docs)
    ids = [d["id"] for d in docs]
    out = tmp_path / "duplicates"
    out.mkdir()
    (out / "duplicates.tsv").write_text(
        f"exact\t{min(ids[0], ids[1])}\t2\t{','.join(sorted(ids[:2]))}\n"
        f"near\t{min(ids[:4])}\t4\t{','.join(sorted(ids[:4]))}\n"
        "not a group line\n", encoding="utf-8")

    groups, skipped = duplicates.read_groups(duplicates.find_output(out))
    assert [(g.kind, g.size) for g in groups] == [("exact", 2), ("near", 4)] and skipped == 1
    from imgpipe import meili

    index = meili.search_client(search_only(settings)).index(settings.meili_index)
    documents = duplicates.resolve(lambda f, n: index.search("", {"filter": f, "limit": n})["hits"], groups)
    assert set(documents) == set(ids[:4])
    # Deleting all but the largest copy frees the others' bytes.
    assert duplicates.reclaimable_bytes(groups[0], documents) == min(docs[0]["size_bytes"], docs[1]["size_bytes"])
    assert duplicates.reclaimable_bytes(groups[1], documents) == sum(sorted(d["size_bytes"] for d in docs[:4])[:3])

    result = subprocess.run([sys.executable, "visualize/report.py", "--out", str(tmp_path / "charts"),
                             "--duplicates-dir", str(out), "--previews", "1"], cwd=REPO_ROOT,
                            env=script_env(settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Duplicate groups (1 exact, 1 near; 4 images" in result.stdout
    assert docs[0]["file_name"] in result.stdout and "not duplicate groups; left out" in result.stderr
    width, height = png_size(tmp_path / "charts" / "duplicates.png")
    assert width > 500 and height > 200
