"""Shared code of the pipeline: settings, logging, errors, Kafka helpers, clients.

Imports nothing from `connectors`, `streams`, `sinks` or `sandbox`.
"""
