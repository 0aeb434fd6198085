"""Shared core of the image pipeline: settings, clients, the event schema, errors, logging.

Data flows producer/ -> Kafka -> consumer/ -> S3 + MeiliSearch -> mapreduce/ + visualize/.
Everything more than one of those scripts needs lives here, once.
"""

PIPELINE_VERSION = "2.0.0"
