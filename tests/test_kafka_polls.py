"""imgpipe/kafka.py's handling of what one poll returns, shared by the consumer, the enricher and
the notifications producer."""
def test_a_poll_keeps_the_messages_with_data_and_logs_what_kafka_reported_instead(caplog):
    from imgpipe import kafka

    class Polled:  # what confluent-kafka's consume() returns: data, or an error in its place
        def __init__(self, error=None):
            self._error = error

        def error(self):
            return self._error

    data, end = Polled(), Polled("_PARTITION_EOF")
    with caplog.at_level("WARNING"):
        assert kafka.without_errors([data, end, data]) == [data, data]
    assert "Kafka reported: _PARTITION_EOF" in caplog.text


def test_poll_batch_returns_what_is_there_without_waiting_for_a_full_batch(settings):
    """consume(n, timeout) alone waits out its timeout unless n messages came: a trickle would pay
    the whole wait on every message. poll_batch takes what was fetched, up to its maximum."""
    import time

    from imgpipe import kafka

    kafka.ensure_topics(settings, [settings.kafka_topic], partitions=1)
    producer = kafka.producer(settings)
    for i in range(5):
        kafka.produce(producer, settings.kafka_topic, key=b"k", value=f"m{i}".encode())
    assert producer.flush(30) == 0
    consumer = kafka.consumer(settings)
    consumer.subscribe([settings.kafka_topic])
    try:
        got = []
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            got += kafka.poll_batch(consumer, 3 - len(got), 1.0)
        assert [m.value() for m in got] == [b"m0", b"m1", b"m2"]
        started = time.monotonic()
        rest = kafka.poll_batch(consumer, 200, 120.0)
        while len(rest) < 2 and time.monotonic() - started < 60:
            rest += kafka.poll_batch(consumer, 200, 120.0)
        assert [m.value() for m in rest] == [b"m3", b"m4"]
        # Two messages of the 200 asked for, and the 120 s wait not waited out.
        assert time.monotonic() - started < 60
    finally:
        consumer.close()
