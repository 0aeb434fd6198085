"""`visualize_100k`, `visualize_1m` and their peak memory: wall seconds and peak RSS of
`visualize/report.py --previews 0` on indexes of 100,000 and 1,000,000 generated documents.

The target is growth that does not follow the index: at ten times the documents, at most twice
the time and 1.5 times the memory (the views count with MeiliSearch facets and read a few
documents). The document-based view (`--all-documents`, every document into a DataFrame) is
measured on the smaller index for comparison, in the figure's detail.

The documents come from fixtures.documents (every field, as the consumer writes them, built by
to_document). Indexing a million takes several minutes, so in a full run each index is kept in
the local MeiliSearch for the next run, under a name holding its size and a hash of the code that
builds the documents and the index settings (a change makes a new index, and the stale one is
deleted); `make clean` removes them with the rest of .local/. A --quick run builds small ones and
deletes them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imgpipe import meili
from imgpipe.settings import REPO_ROOT, Settings, to_env

from bench.figures import Figure
from bench.pipeline import BenchError

log = logging.getLogger(__name__)

SEED = 7
CHUNK = 10_000  # documents per add_documents request
INDEX_PREFIX = "bench_visualize"


def index_name(documents: int) -> str:
    code = b"".join((REPO_ROOT / name).read_bytes() for name in ("fixtures/documents.py", "imgpipe/document.py"))
    return f"{INDEX_PREFIX}_{documents}_{hashlib.sha256(code).hexdigest()[:10]}"


def _chunks(documents: int):
    from fixtures.documents import sample_document

    rng = random.Random(SEED)
    for start in range(0, documents, CHUNK):
        yield [sample_document(i, rng) for i in range(start, min(documents, start + CHUNK))]


def ensure_index(settings: Settings, documents: int, show_progress: bool | None = None) -> tuple[str, float | None]:
    """(index name, seconds spent building it, None when it was already there)."""
    from imgpipe import cli
    from imgpipe.document import INDEX_SETTINGS

    # Built with the master key, as set-up builds an index: the stack's consumer key may not
    # create or delete indexes.
    settings = settings.with_overrides(meili_admin_key=settings.meili_master_key)
    name = index_name(documents)
    if meili.index_exists(settings, name) and meili.document_count(settings, name) == documents:
        return name, None
    for stale in meili.index_uids(settings, f"{INDEX_PREFIX}_{documents}_"):
        meili.delete_index(settings, stale, key=settings.meili_master_key)
    started = time.monotonic()
    meili.create_index(settings, name, INDEX_SETTINGS)
    last = None
    with cli.progress(documents, f"indexing {documents:,} documents", unit="doc", enabled=show_progress) as bar:
        for chunk in _chunks(documents):
            last = meili.enqueue_documents(settings, name, chunk)
            bar.update(len(chunk))
    if last is not None:
        meili.wait_for_task(meili.client(settings), settings, last, f"indexing {documents:,} documents", name,
                            timeout_ms=3_600_000)
    count = meili.document_count(settings, name)
    if count != documents:
        raise BenchError(f"index {name} holds {count} of {documents} documents")
    return name, time.monotonic() - started


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mb: float
    stdout: str


# Runs a script as `python script.py ARGS` would, then writes the process's own peak resident
# memory (VmHWM). Not wait4's ru_maxrss: that carries the parent's peak across fork and exec, and
# the bench process holds its corpus.
_MEASURED = """
import runpy, sys
report, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(report, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def run_visualize(settings: Settings, index: str, out: Path, *extra: str) -> Run:
    """One report.py as a user runs it: wall time and its own peak RSS."""
    report = out / "vmhwm_kb.txt"
    args = [sys.executable, "-c", _MEASURED, str(report), str(REPO_ROOT / "visualize" / "report.py"),
            "--index", index, "--previews", "0", "--out", str(out), "--mapreduce-dir", str(out / "no-mapreduce"),
            "--duplicates-dir", str(out / "no-duplicates"), "--no-progress", *extra]
    report.unlink(missing_ok=True)
    started = time.perf_counter()
    result = subprocess.run(args, cwd=REPO_ROOT, env={**os.environ, **to_env(settings)}, capture_output=True,
                            text=True, errors="replace")
    seconds = time.perf_counter() - started
    if result.returncode != 0 or not report.exists():
        raise BenchError(f"visualize.py exited with {result.returncode}: {result.stderr[-500:]}")
    return Run(seconds, int(report.read_text()) / 1024, result.stdout)


def best_of(passes: int, settings: Settings, index: str, out: Path, *extra: str) -> Run:
    runs = [run_visualize(settings, index, out, *extra) for _ in range(max(1, passes))]
    return Run(min(r.seconds for r in runs), max(r.peak_rss_mb for r in runs), runs[0].stdout)


def visualize_figures(settings: Settings, small: int, large: int, work: Path, passes: int, keep: bool,
                      show_progress: bool | None = None) -> list[Figure]:
    out = work / "visualize"
    out.mkdir(parents=True, exist_ok=True)
    built: dict[int, float | None] = {}
    names: dict[int, str] = {}
    try:
        for size in (small, large):
            names[size], built[size] = ensure_index(settings, size, show_progress)
        facets = {size: best_of(passes, settings, names[size], out) for size in (small, large)}
        documents = best_of(1, settings, names[small], out, "--all-documents")
    finally:
        if not keep:
            for name in names.values():
                meili.delete_index(settings, name, key=settings.meili_master_key)
    for size in (small, large):
        if f"{size:,} images from index" not in facets[size].stdout:
            raise BenchError(f"visualize.py did not report {size:,} images for {names[size]}")

    def detail(size: int) -> dict:
        return {"documents": size, "index": names[size], "passes": passes, "peak_rss_mb": round(facets[size].peak_rss_mb, 1),
                "index_build_seconds": None if built[size] is None else round(built[size], 1),
                "index_kept_for_next_run": keep,
                "command": "visualize.py --index INDEX --previews 0 (counts with MeiliSearch facets)"}

    small_name, large_name = _label(small), _label(large)
    return [
        Figure("visualize_100k", facets[small].seconds, "s",
               detail={**detail(small), "label": small_name, "all_documents": {
                   "seconds": round(documents.seconds, 2), "peak_rss_mb": round(documents.peak_rss_mb, 1),
                   "command": "visualize.py --all-documents (every document into a DataFrame)"}}),
        Figure("visualize_100k_peak_rss_mb", facets[small].peak_rss_mb, "MB", detail={"documents": small}),
        Figure("visualize_1m", facets[large].seconds, "s", floor=facets[small].seconds,
               floor_name=f"visualize_100k, {small_name} documents", detail={**detail(large), "label": large_name}),
        Figure("visualize_1m_peak_rss_mb", facets[large].peak_rss_mb, "MB", floor=facets[small].peak_rss_mb,
               floor_name=f"visualize_100k_peak_rss_mb, {small_name} documents", detail={"documents": large}),
    ]


def _label(size: int) -> str:
    return f"{size // 1_000_000}M" if size % 1_000_000 == 0 else f"{size // 1000}k" if size % 1000 == 0 else str(size)
