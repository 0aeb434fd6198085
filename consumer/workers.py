"""Image processing in worker processes, so that no image can stop the consumer.

OpenCV cannot be interrupted from a Python thread, and a decoder that runs away with memory
takes its whole process down. So every image is processed in a pebble ProcessPool worker:
pebble kills a task that runs past PROCESSING_TIMEOUT_SECONDS and replaces a worker that died,
and each worker runs under a hard address-space cap (WORKER_MEMORY_MB above what it takes at
rest), so an image that gets
past the decoded-size estimate (MAX_DECODE_BYTES, checked from the header) can only take down
its own worker. The consumer's other images, and its own memory, are unaffected.

Workers are spawned, not forked: a fresh interpreter applies the decoder limits before cv2 is
loaded, and inherits none of the consumer's Kafka or S3 threads.
"""
from __future__ import annotations

import logging
import multiprocessing
import resource
import signal
import threading
from concurrent.futures import CancelledError, TimeoutError

from imgpipe.errors import InfrastructureError, MessageError
from imgpipe.retry import Stopped
from imgpipe.settings import Settings

log = logging.getLogger(__name__)


def _init_worker(max_image_pixels: int, memory_mb: int, preload=None) -> None:
    from consumer.imageguard import apply_decoder_limits

    apply_decoder_limits(max_image_pixels)  # before cv2 loads, so OpenCV's own ceiling is ours
    import cv2

    # One thread each: parallelism comes from the workers; OpenCV's own threads would compete.
    cv2.setNumThreads(1)
    # Every corrupt PNG would print an OpenCV warning; the dead-letter reason already says it.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    import consumer.processing  # (loaded once per worker, not on its first image)

    # The first call pays for tables built lazily (OpenCV's Lab conversion, numpy's median):
    # about 0.2 s, measured. Paid here, while the consumer joins its group, rather than by the
    # first image against PROCESSING_TIMEOUT_SECONDS.
    try:
        import numpy as np

        ok, png = cv2.imencode(".png", np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3))
        consumer.processing.process_image(png.tobytes())
    except Exception:  # a warm-up must never stop a worker from starting
        log.debug("worker warm-up failed", exc_info=True)

    if preload is not None:
        preload()  # a model (the enricher's): loaded before the cap, which then means the same per image

    # A consumer stopped with Ctrl-C stops its workers itself; they must not die of the same SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_mb:
        # On top of what the worker takes at rest (interpreter, OpenCV, its thread stacks: ~0.5 GB of
        # address space here, more or less elsewhere), so the cap means the same on any machine.
        limit = _address_space_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _address_space_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _process_in_worker(data: bytes, options):
    """process_image, plus this worker's peak resident memory (MB) and the CPU seconds the image
    took, for the consumer's summary."""
    import time

    from consumer.processing import process_image
    from consumer.stats import peak_rss_mb

    started = time.process_time()
    image = process_image(data, options)
    return image, peak_rss_mb(), time.process_time() - started


def _started() -> None:
    """The task that starts the pool's workers (see ProcessingPool)."""


class ProcessingPool:
    def __init__(self, settings: Settings, workers: int, preload=None):
        """`preload`: a picklable callable each worker runs once at start, before its memory cap."""
        from pebble import ProcessPool

        from consumer.options import ProcessingOptions

        self.options = ProcessingOptions.from_settings(settings)
        self.timeout = settings.processing_timeout_seconds
        self.memory_mb = settings.worker_memory_mb
        self.workers = workers
        self.peak_worker_rss_mb = 0.0
        self.cpu_seconds = 0.0  # CPU the workers spent on the images that came back
        self._lock = threading.Lock()  # process() runs on many I/O threads
        self._pool = ProcessPool(max_workers=workers, initializer=_init_worker,
                                 initargs=(settings.max_image_pixels, settings.worker_memory_mb, preload),
                                 context=multiprocessing.get_context("spawn"))
        # pebble starts its workers with the first task. Started now, they load OpenCV (and a
        # model) while the consumer joins its group, instead of keeping the first image waiting
        # about a second (measured: the first uploads of a live run took 1.5-2 s to be searchable).
        self._pool.schedule(_started)

    def process(self, data: bytes):
        """The ProcessedImage of `data`. Raises MessageError (bad input, or over a budget),
        Stopped (the pool was stopped), or InfrastructureError (a broken OpenCV install)."""
        return self.run(_process_in_worker, data, self.options)

    def run(self, function, *args):
        """`function(*args)` in a worker, under the budgets; it returns (result, the worker's peak
        RSS in MB, its CPU seconds). Raises as `process` does."""
        from pebble import ProcessExpired

        future = self._pool.schedule(function, args=args, timeout=self.timeout)
        try:
            image, worker_peak, cpu = future.result()
        except TimeoutError:
            raise MessageError("budget", f"processing took longer than PROCESSING_TIMEOUT_SECONDS = "
                                         f"{self.timeout} s; its worker was stopped") from None
        except ProcessExpired as exc:
            raise MessageError(*self._expired(exc.exitcode)) from None
        except CancelledError:
            raise Stopped("processing pool stopped") from None
        except (MessageError, InfrastructureError):
            raise
        except RuntimeError as exc:
            if "pool" in str(exc).lower() and ("closed" in str(exc).lower() or "not running" in str(exc).lower()):
                raise Stopped("processing pool stopped") from None
            raise
        with self._lock:
            self.peak_worker_rss_mb = max(self.peak_worker_rss_mb, worker_peak)
            self.cpu_seconds += cpu
        return image

    def _expired(self, exitcode: int | None) -> tuple[str, str]:
        """(stage, reason) for a worker that died while it processed an image."""
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
            if -exitcode == signal.SIGKILL:
                return "budget", (f"its worker was killed ({name}), most likely by the kernel for memory; "
                                  f"WORKER_MEMORY_MB = {self.memory_mb}")
            return "decode", f"the decoder crashed its worker ({name})"
        return "budget", (f"its worker exited with status {exitcode} while processing it (memory cap "
                          f"WORKER_MEMORY_MB = {self.memory_mb})")

    def close(self, wait: bool = True) -> None:
        """Stop taking images; with `wait`, let the ones in flight finish, else stop them now."""
        if wait:
            self._pool.close()
        else:
            self._pool.stop()
        self._pool.join(timeout=max(5, self.timeout + 5))
