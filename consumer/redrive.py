#!/usr/bin/env python3
"""Send dead letters back through the pipeline, after the cause was fixed.

Reads the dead-letter topic (KAFKA_DEAD_LETTER_TOPIC) from its start to its end as it is now,
keeps the dead letters that match the filters, and produces each original event (its original
key and value) to the main topic again. A dead letter whose key or value was cut to fit is
redriven from the source topic, at the partition and offset its headers name, while that is
still retained. Redriving twice is harmless: the consumer replaces a document by its id, so an
image processed twice is indexed once. A redriven event that fails again is dead-lettered again.

Settings from the environment and .env: KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC,
KAFKA_DEAD_LETTER_TOPIC, KAFKA_CLIENT_CONFIG.
Exit status: 0 done (also when nothing matched), 1 some could not be redriven or Kafka failed,
2 usage or settings error.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from imgpipe import cli, deadletters, kafka
from imgpipe.deadletters import FAILED_AT, REASON, REDRIVEN_FROM, DeadLetter, Stage
from imgpipe.errors import InfrastructureError, UserError
from imgpipe.events import parse_iso
from imgpipe.settings import Settings, load_settings

@dataclass(frozen=True)
class Filters:
    stages: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    reason_contains: str | None = None

    def match(self, letter: DeadLetter) -> bool:
        if self.stages and letter.stage not in self.stages:
            return False
        if self.reason_contains and self.reason_contains.lower() not in letter.reason.lower():
            return False
        when = letter.failed_at
        if (self.since or self.until) and when is None:
            return False
        if self.since and when < self.since:
            return False
        return not (self.until and when >= self.until)


read_dead_letters = deadletters.read_all


def original_of(settings: Settings, letter: DeadLetter) -> tuple[bytes | None, bytes | None] | None:
    """The original key and value: from the dead letter, or from the source topic when it was cut.
    None when the original is no longer there."""
    if not letter.cut:
        return letter.key, letter.value
    source = letter.source
    if source is None:
        return None
    msg = kafka.read_one(settings, *source)
    return None if msg is None else (msg.key(), msg.value())


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("consumer/redrive.py", __doc__, [
        "python consumer/redrive.py --dry-run                       # list every dead letter",
        "python consumer/redrive.py --stage fetch --since 2026-12-01T08:00:00Z",
        "python consumer/redrive.py --stage budget --reason-contains PROCESSING_TIMEOUT",
        "python consumer/redrive.py --stage decode --stage guard --dry-run --json",
        "python consumer/redrive.py --enricher --stage text      # the enricher's, back to KAFKA_INDEXED_TOPIC"])
    p.add_argument("--stage", action="append", default=[], choices=[stage.value for stage in Stage],
                   help="only dead letters of this stage (repeatable)")
    p.add_argument("--since", metavar="TIME", help="only dead letters written at or after this UTC ISO-8601 time")
    p.add_argument("--until", metavar="TIME", help="only dead letters written before this UTC ISO-8601 time")
    p.add_argument("--reason-contains", metavar="TEXT", help="only dead letters whose reason holds TEXT (any case)")
    p.add_argument("--limit", type=int, help="redrive at most this many")
    p.add_argument("--topic", help="send to this topic instead of KAFKA_TOPIC")
    p.add_argument("--enricher", action="store_true",
                   help="the enricher's dead letters (env KAFKA_ENRICHER_DEAD_LETTER_TOPIC), sent back to "
                        "KAFKA_INDEXED_TOPIC unless --topic says otherwise")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent; send nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the matching dead letters as JSON lines")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _time(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = parse_iso(text)
    if moment is None:
        raise UserError(f"{option} must be an ISO-8601 time such as 2026-12-01T08:00:00Z, got {text!r}")
    return moment


def redrive(args) -> int:
    settings = load_settings()
    default_target = settings.kafka_topic
    if args.enricher:
        settings = settings.with_overrides(kafka_dead_letter_topic=settings.kafka_enricher_dead_letter_topic)
        default_target = settings.kafka_indexed_topic
    filters = Filters(tuple(args.stage), _time("--since", args.since), _time("--until", args.until),
                      args.reason_contains)
    cli.check_ranges(args, {"limit": (1, None)})
    target = args.topic or default_target
    if target == settings.kafka_dead_letter_topic:
        raise UserError("--topic must not be the dead-letter topic itself")
    kafka.check_topic(settings, settings.kafka_dead_letter_topic)
    kafka.check_topic(settings, target)

    scanned = 0
    selected: list[DeadLetter] = []
    for letter in read_dead_letters(settings):
        scanned += 1
        if filters.match(letter) and (args.limit is None or len(selected) < args.limit):
            selected.append(letter)
    by_stage = Counter(letter.stage for letter in selected)
    if args.dry_run:
        if args.json:
            for letter in selected:
                print(json.dumps({"partition": letter.partition, "offset": letter.offset, "stage": letter.stage,
                                  "failed_at": letter.headers.get(FAILED_AT), "reason": letter.headers.get(REASON),
                                  "key": (letter.key or b"").decode("utf-8", "replace"), "cut": letter.cut,
                                  "source": letter.source}, ensure_ascii=False))
        elif selected:
            from tabulate import tabulate

            print(tabulate([(f"{letter.partition}@{letter.offset}", letter.stage, letter.headers.get(FAILED_AT, ""),
                             letter.shown_key(), cli.printable(letter.reason)[:100])
                            for letter in selected],
                           headers=["dead letter", "stage", "failed at", "key", "reason"], tablefmt="simple"))
        print(f"redrive (dry run): {len(selected)} of {scanned} dead letters match"
              + "".join(f"; {stage} {n}" for stage, n in sorted(by_stage.items()))
              + f"; nothing sent to {target}", file=sys.stderr)
        return cli.EXIT_OK

    sender = kafka.producer(settings)
    failures: list[str] = []
    unrecoverable = 0

    def delivered(err, msg) -> None:
        if err is not None:
            failures.append(err.str())

    with cli.progress(len(selected), "redriving", unit="msg") as bar:
        for letter in selected:
            original = original_of(settings, letter)
            if original is None:
                unrecoverable += 1
                print(f"warning: dead letter {letter.partition}@{letter.offset} was cut and its original is no longer "
                      f"in {letter.source}: not redriven", file=sys.stderr)
                continue
            key, value = original
            headers = [(REDRIVEN_FROM, f"{settings.kafka_dead_letter_topic}[{letter.partition}]@{letter.offset}"
                        .encode())]
            kafka.produce(sender, target, key, value, headers, on_delivery=delivered)
            sender.poll(0)
            bar.update(1)
    remaining = sender.flush(60)
    if remaining:
        raise InfrastructureError("kafka", f"{remaining} redriven event(s) not acknowledged within 60 s")
    sent = len(selected) - unrecoverable - len(failures)
    print(f"redrive: {sent} of {len(selected)} matching dead letters (of {scanned}) sent to {target}"
          + "".join(f"; {stage} {n}" for stage, n in sorted(by_stage.items()))
          + (f"; {unrecoverable} whose original is gone" if unrecoverable else "")
          + (f"; {len(failures)} refused by Kafka ({failures[0]})" if failures else ""), file=sys.stderr)
    return cli.EXIT_FAILURES if unrecoverable or failures else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    if args.json and not args.dry_run:
        print("error: --json goes with --dry-run", file=sys.stderr)
        return cli.EXIT_USAGE
    return cli.run(lambda: redrive(args))


if __name__ == "__main__":
    sys.exit(main())
