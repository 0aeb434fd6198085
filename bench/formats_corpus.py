"""A held-out corpus of real-world image files through the real consumer, judged file by file.

Every file under --corpus (e.g. Pillow's Tests/images from its source distribution: every format
it reads, fuzzer crashers, decompression bombs) is uploaded to the local stack's S3, announced by
the producer and drained by one consumer in its default configuration. Each file is also
classified on its own, in throw-away processes with a memory cap and a time limit: does OpenCV
decode it (within MAX_IMAGE_PIXELS)? does Pillow? The report: how many OpenCV-decodable files
were indexed, how many of the files only Pillow decodes, that every file ended indexed or
dead-lettered (nothing lost), the consumer's process tree's peak memory and the drain time.

    pip download --no-deps --no-binary :all: pillow==13.0.0 -d /tmp/pillow-sdist
    tar xzf /tmp/pillow-sdist/pillow-13.0.0.tar.gz -C /tmp/pillow-sdist
    python -m bench.formats_corpus --corpus /tmp/pillow-sdist/pillow-13.0.0/Tests/images

Exit status: 0 every target met, 1 one missed or a step failed, 2 a usage mistake.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from imgpipe import cli
from imgpipe.errors import UserError

log = logging.getLogger("bench.formats_corpus")

CLASSIFY_SECONDS = 20  # per file, in the classifier's throw-away process
CLASSIFY_MEMORY = 2 << 30  # address space of a classifier process
TARGET_OPENCV = 1.0  # share of the OpenCV-decodable files (within the pixel limit) indexed
TARGET_PILLOW_ONLY = 0.9
TARGET_PEAK_MB = 1536


def build_parser():
    p = cli.parser("python -m bench.formats_corpus", __doc__, [
        "python -m bench.formats_corpus --corpus /tmp/pillow-sdist/pillow-13.0.0/Tests/images",
        "python -m bench.formats_corpus --corpus ~/Pictures --workers 2 --out /tmp/formats.json",
        "MAX_IMAGE_PIXELS=50000000 python -m bench.formats_corpus --corpus DIR --keep   # the consumer's settings apply"])
    p.add_argument("--corpus", type=Path, required=True, help="folder of files (read recursively)")
    p.add_argument("--workers", type=int, default=2,
                   help="the consumer's worker processes (passed as --workers, so CONSUMER_WORKERS does not apply)")
    p.add_argument("--out", type=Path, help="also write the per-file verdicts and the totals as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the run's topics, index and S3 objects")
    p.add_argument("--classify-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--max-image-pixels", type=int, help=argparse.SUPPRESS)
    return p


# --- classification, in throw-away processes ----------------------------------------------------

def _classifier_init(max_image_pixels: int) -> None:
    import resource

    from consumer.imageguard import apply_decoder_limits

    resource.setrlimit(resource.RLIMIT_AS, (CLASSIFY_MEMORY, CLASSIFY_MEMORY))
    apply_decoder_limits(max_image_pixels)  # before cv2 loads: OpenCV's own ceiling is the limit
    import cv2

    cv2.setNumThreads(1)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def classify(path: str, max_image_pixels: int) -> dict:
    """Does OpenCV decode the file (within the pixel limit)? Does Pillow (with what this
    environment registers: HEIF, JXL; EPS never)? Both with the pixel limit applied."""
    import io
    import signal
    import warnings

    import cv2
    import numpy as np
    from PIL import Image

    data = Path(path).read_bytes()
    verdict = {"opencv": False, "pillow": False, "pillow_format": None, "pixels": None}

    def alarm(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CLASSIFY_SECONDS)
    try:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            verdict["opencv"] = image is not None and image.size > 0
        except (cv2.error, MemoryError, TimeoutError):
            pass
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = Image.open(io.BytesIO(data))
                verdict["pillow_format"] = image.format
                verdict["pixels"] = image.size[0] * image.size[1]
                if verdict["pixels"] <= max_image_pixels:
                    image.load()
                    verdict["pillow"] = True
        except (Exception, MemoryError):  # anything Pillow raises means "not decoded"
            pass
    except TimeoutError:
        pass
    finally:
        signal.alarm(0)
    return verdict


def _classify_worker(max_image_pixels: int) -> int:
    """`--classify-worker`: read paths on stdin, answer one JSON line each (run by classify_all)."""
    _classifier_init(max_image_pixels)
    for line in sys.stdin:
        print(json.dumps(classify(line.rstrip("\n"), max_image_pixels)), flush=True)
    return 0


class _Classifier:
    """One throw-away classifier process; replaced when a file kills it or takes too long."""

    def __init__(self, max_image_pixels: int):
        import subprocess

        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.formats_corpus", "--classify-worker", "--corpus", ".",
             "--max-image-pixels", str(max_image_pixels)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def ask(self, path: str) -> dict | None:
        import select

        try:
            self.process.stdin.write(path + "\n")
            self.process.stdin.flush()
        except OSError:
            return None
        ready, _, _ = select.select([self.process.stdout], [], [], CLASSIFY_SECONDS * 2)
        line = self.process.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # our own child, by its handle
        self.process.wait()


def classify_all(paths: list[Path], max_image_pixels: int) -> dict[str, dict]:
    """Each file classified in a throw-away process (two at a time): a fuzzer file may crash or
    hang a decoder, which then costs that process only."""
    from concurrent.futures import ThreadPoolExecutor

    verdicts: dict[str, dict] = {}
    slots = [_Classifier(max_image_pixels) for _ in range(2)]

    def work(slot: int, chunk: list[Path]) -> None:
        for path in chunk:
            verdict = slots[slot].ask(str(path))
            if verdict is None:  # crashed or hung: it counts as decoded by neither
                slots[slot].stop()
                slots[slot] = _Classifier(max_image_pixels)
                verdict = {"opencv": False, "pillow": False, "pillow_format": None, "pixels": None,
                           "classifier_failed": True}
            verdicts[str(path)] = verdict

    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(work, (0, 1), (paths[0::2], paths[1::2])))
    finally:
        for slot in slots:
            slot.stop()
    return verdicts


# --- the stack run ------------------------------------------------------------------------------

def _tree_rss_mb(process) -> float:
    import psutil

    try:
        members = [process] + process.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_consumer(settings, names, step: str, files: dict[str, bytes], workers: int, work: Path) -> dict:
    import psutil

    from bench.pipeline import BenchError, _read_json, prepare_index, produce_all, start_script
    from demo.corpus import upload_corpus
    from imgpipe import kafka

    run = names.settings(settings, step)
    kafka.ensure_topics(run, [run.kafka_topic, run.kafka_dead_letter_topic])
    prepare_index(run)
    upload_corpus(settings, list(files.items()), run.s3_raw_prefix, workers=8)
    produce_all(run, work, step, len(files))
    summary_path = work / f"{step}-consumer.json"
    log_path = work / f"{step}-consumer.log"
    started = time.monotonic()
    consumer = start_script("consumer/image_consumer.py",
                            ["--workers", str(workers), "--max-idle-seconds", "5", "--status-interval", "3600",
                             "--no-progress", "--summary-json", str(summary_path)], run, log_path)
    peak = 0.0
    watched = psutil.Process(consumer.pid)
    while consumer.poll() is None:
        peak = max(peak, _tree_rss_mb(watched))
        time.sleep(0.1)
    seconds = time.monotonic() - started
    if consumer.returncode != 0:
        raise BenchError(f"the consumer exited with status {consumer.returncode}; see {log_path}")
    summary = _read_json(summary_path)
    summary.update(peak_tree_rss_mb=round(peak, 1), wall_seconds=round(seconds, 2), settings=run)
    return summary


def dead_letters(run) -> dict[str, dict]:
    from imgpipe import kafka

    messages = kafka.read_messages(run, run.kafka_dead_letter_topic, timeout=10)
    result = {}
    for message in messages:
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])}
        try:
            key = json.loads(message.value())["key"]
        except (ValueError, KeyError, TypeError):
            continue
        result[key] = headers
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.classify_worker:
        return _classify_worker(args.max_image_pixels)
    cli.setup_logging()

    def body() -> int:
        from bench.pipeline import RunNames
        from imgpipe import kafka, meili, s3
        from stack.lifecycle import ensure_running

        if not args.corpus.is_dir():
            raise UserError(f"--corpus {args.corpus} is not a folder")
        paths = sorted(p for p in args.corpus.rglob("*") if p.is_file() and p.stat().st_size > 0)
        if not paths:
            raise UserError(f"--corpus {args.corpus} holds no files")
        settings, _ = ensure_running()
        print(f"{len(paths)} files under {args.corpus}; classifying each (OpenCV? Pillow?) ...", file=sys.stderr)
        verdicts = classify_all(paths, settings.max_image_pixels)
        names = RunNames(uuid.uuid4().hex[:8])
        files = {str(p.relative_to(args.corpus)): p.read_bytes() for p in paths}
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"formats-corpus-{names.run_id}"
        work.mkdir(parents=True, exist_ok=True)
        print(f"uploading {len(files)} files and draining them with one consumer ({args.workers} workers) ...",
              file=sys.stderr)
        summary = run_consumer(settings, names, "formats", files, args.workers, work)
        run = summary.pop("settings")
        try:
            reader = meili.DocumentReader(run, run.meili_index, key=run.meili_master_key)
            documents = {d["key"][len(run.s3_raw_prefix):]: d for d in reader}
            dead = {k[len(run.s3_raw_prefix):]: v for k, v in dead_letters(run).items()}
        finally:
            if not args.keep:
                meili.delete_index(run, run.meili_index, key=run.meili_master_key)
                kafka.delete_topics(run, [run.kafka_topic, run.kafka_dead_letter_topic])
                s3.delete_prefix(s3.client(run), run.s3_bucket, names.s3_prefix)
        return report(paths, args.corpus, verdicts, documents, dead, summary, args.out)

    return cli.run(body)


def report(paths, corpus: Path, verdicts, documents, dead, summary, out: Path | None) -> int:
    rows = []
    for path in paths:
        name = str(path.relative_to(corpus))
        verdict = verdicts.get(str(path), {})
        outcome = "indexed" if name in documents else "dead-lettered" if name in dead else "lost"
        rows.append({"file": name, "outcome": outcome, **verdict,
                     "format": documents.get(name, {}).get("format"),
                     "stage": dead.get(name, {}).get("stage"), "reason": dead.get(name, {}).get("reason")})
    opencv = [r for r in rows if r["opencv"]]
    pillow_only = [r for r in rows if r["pillow"] and not r["opencv"]]
    neither = [r for r in rows if not r["opencv"] and not r["pillow"]]
    lost = [r for r in rows if r["outcome"] == "lost"]

    def share(group):
        return sum(r["outcome"] == "indexed" for r in group) / len(group) if group else 1.0

    totals = {
        "files": len(rows), "indexed": sum(r["outcome"] == "indexed" for r in rows),
        "dead_lettered": sum(r["outcome"] == "dead-lettered" for r in rows), "lost": len(lost),
        "opencv_decodable": len(opencv), "opencv_indexed": sum(r["outcome"] == "indexed" for r in opencv),
        "pillow_only": len(pillow_only), "pillow_only_indexed": sum(r["outcome"] == "indexed" for r in pillow_only),
        "neither_decodes": len(neither), "neither_indexed": sum(r["outcome"] == "indexed" for r in neither),
        "consumer_tree_peak_rss_mb": summary["peak_tree_rss_mb"], "consumer_wall_seconds": summary["wall_seconds"],
        "drain_seconds_first_message_to_last_commit": summary.get("active_seconds"),
        "indexed_formats": dict(Counter(r["format"] for r in rows if r["format"]).most_common()),
        "dead_letter_stages": dict(Counter(r["stage"] for r in rows if r["stage"]).most_common()),
    }
    print()
    print(f"files                                   {totals['files']}")
    print(f"indexed / dead-lettered / lost          {totals['indexed']} / {totals['dead_lettered']} / {len(lost)}")
    print(f"OpenCV decodes, indexed                 {totals['opencv_indexed']} of {len(opencv)} "
          f"({share(opencv):.1%}, target {TARGET_OPENCV:.0%})")
    print(f"only Pillow decodes, indexed            {totals['pillow_only_indexed']} of {len(pillow_only)} "
          f"({share(pillow_only):.1%}, target {TARGET_PILLOW_ONLY:.0%})")
    print(f"neither decodes, indexed anyway         {totals['neither_indexed']} of {len(neither)}")
    print(f"consumer process tree, peak RSS         {summary['peak_tree_rss_mb']:.0f} MB (target < {TARGET_PEAK_MB} MB)")
    print(f"consumer wall time (start to exit)      {summary['wall_seconds']:.1f} s "
          f"(first message to last commit {summary.get('active_seconds') or 0:.1f} s)")
    print(f"indexed formats                         {totals['indexed_formats']}")
    missed = [r for r in opencv + pillow_only if r["outcome"] != "indexed"]
    if missed:
        print("\ndecodable files not indexed (file, decoders, stage: reason):")
        for r in missed:
            decoders = "+".join(d for d in ("opencv", "pillow") if r[d])
            print(cli.printable(f"  {r['file']}  [{decoders}, {r.get('pillow_format')}]  {r['stage']}: {r['reason']}"))
    if out:
        out.write_text(json.dumps({"totals": totals, "files": rows}, indent=2))
        print(f"\nwrote {out}")
    met = (not lost and share(opencv) >= TARGET_OPENCV and share(pillow_only) >= TARGET_PILLOW_ONLY
           and summary["peak_tree_rss_mb"] < TARGET_PEAK_MB)
    return cli.EXIT_OK if met else cli.EXIT_FAILURES


if __name__ == "__main__":
    sys.exit(main())
