"""The Docker path of the test suite (``SFPROV_TEST_DOCKER=1``) asks testcontainers for a
broker its Kafka container supports.

Docker is not available here and testcontainers' containers open a Docker client as they are
built, so this checks the container class's own KRaft gate on the image (the check that
refused ``apache/kafka:3.9.1``) without building one; the rest was verified by reading the
installed testcontainers' ``community/kafka/__init__.py`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from testcontainers.community.kafka import KafkaContainer  # pinned: a missing one fails

from tests.conftest import DOCKER_KAFKA_IMAGE


def kraft_gate(image: str) -> None:
    """``KafkaContainer.with_kraft``'s check, on an image name alone."""
    KafkaContainer._verify_min_kraft_version(
        SimpleNamespace(image=image, MIN_KRAFT_TAG=KafkaContainer.MIN_KRAFT_TAG))


def test_the_image_is_one_the_kafka_container_runs_in_kraft_mode():
    assert DOCKER_KAFKA_IMAGE.startswith("confluentinc/cp-kafka:7.9.")  # Apache Kafka 3.9
    kraft_gate(DOCKER_KAFKA_IMAGE)  # raises when refused


def test_the_previous_image_is_refused_as_the_issue_reported():
    with pytest.raises(ValueError, match="not supported in Kraft mode"):
        kraft_gate("apache/kafka:3.9.1")


def test_the_container_drives_confluents_image_scripts():
    """Why only cp-kafka images work: the start script it writes runs Confluent's."""
    import inspect

    source = inspect.getsource(KafkaContainer)
    assert "/etc/confluent/docker/configure" in source
    assert "/etc/confluent/docker/launch" in source
