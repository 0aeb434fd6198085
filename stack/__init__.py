"""The local stack (Kafka, MeiliSearch, S3 on 127.0.0.1): `python -m stack up|status|down`."""
