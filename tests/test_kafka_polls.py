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
