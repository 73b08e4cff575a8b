"""The README's analyst snippet ("Reading outcomes into a table") runs as printed against
an outcomes topic in each wire format, and a mixed one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from common.avro import AvroSerde, SchemaRegistry
from sandbox.registry.harness import running_registry
from tests.conftest import create_topic
from tests.sinks.helpers import outcome

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]


def snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Reading outcomes into a table"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(bootstrap: str, topic: str, registry_url: str | None, **more_env: str) -> str:
    code = snippet()
    for literal in ('"localhost:9092"', '"provisioning.outcomes"', '"analytics-outcomes"'):
        assert literal in code, literal
    code = (code.replace('"localhost:9092"', repr(bootstrap))
                .replace('"provisioning.outcomes"', repr(topic))
                .replace('"analytics-outcomes"', repr(f"analytics-{uuid.uuid4().hex[:8]}")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMA_REGISTRY_")}
    if registry_url:
        env["SCHEMA_REGISTRY_URL"] = registry_url
    env.update(more_env)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill(bootstrap: str, topic: str, serdes: list[AvroSerde], n: int) -> list[dict]:
    records = [outcome(f"801{uuid.uuid4().hex[:15].upper()}", "Provisioned" if i % 3 else
                       "Failed", n=i) for i in range(n)]
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, rec in enumerate(records):
        serde = serdes[i % len(serdes)]
        producer.produce(topic, key=rec["order_id"].encode(), value=serde.encode(rec),
                         headers=serde.headers())
    assert producer.flush(30) == 0
    return records


def check(output: str, records: list[dict]) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == len(records)
    by_order = {line.split()[0]: line.split()[1] for line in lines}
    assert by_order == {r["order_id"]: r["status"] for r in records}


@pytest.mark.parametrize("formats", ["plain", "confluent", "mixed"])
def test_readme_snippet_reads_the_outcomes_topic(kafka_bootstrap, unique_name, formats):
    topic = unique_name("outcomes")
    create_topic(kafka_bootstrap, topic, partitions=2)
    with running_registry() as reg:
        plain = AvroSerde("provisioning_outcome", topic=topic)
        confluent = AvroSerde("provisioning_outcome", topic=topic,
                              registry=SchemaRegistry(reg.url))
        serdes = {"plain": [plain], "confluent": [confluent],
                  "mixed": [plain, confluent]}[formats]
        records = fill(kafka_bootstrap, topic, serdes, 9)
        output = run(kafka_bootstrap, topic, None if formats == "plain" else reg.url)
    check(output, records)


def test_readme_snippet_reads_through_a_registry_that_asks_for_a_login(kafka_bootstrap,
                                                                       unique_name):
    """Confluent Cloud's registry asks for its API key: the snippet sent no credentials,
    so every Confluent-format outcome failed with 401 while the pipeline read them."""
    import threading

    from common.envparse import Secret
    from sandbox.registry.server import RegistryHTTPServer, Store

    topic = unique_name("outcomes")
    create_topic(kafka_bootstrap, topic, partitions=1)
    server = RegistryHTTPServer(("127.0.0.1", 0), Store(), basic_auth=("api-key", "s3cret"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        confluent = AvroSerde("provisioning_outcome", topic=topic, registry=SchemaRegistry(
            url, username="api-key", password=Secret("s3cret")))
        records = fill(kafka_bootstrap, topic, [confluent], 3)
        output = run(kafka_bootstrap, topic, url, SCHEMA_REGISTRY_USERNAME="api-key",
                     SCHEMA_REGISTRY_PASSWORD="s3cret")
    finally:
        server.shutdown()
        server.server_close()
    check(output, records)
