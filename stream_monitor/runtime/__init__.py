"""Kafka and Faust adapters: the only package that imports faust (and, with sinks, confluent_kafka)."""
