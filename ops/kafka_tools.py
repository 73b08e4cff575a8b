"""Kafka's own command-line tools next to the local broker, without a Kafka download.

``ensure_tools()`` resolves ``kafka/tools-pom.xml`` (kafka-tools and the broker's core, the
broker's version) with Maven into ``<state>/kafka/tools`` — once: a marker holding the pom's
hash makes later runs return at once — and writes one wrapper per tool into
``<state>/kafka/bin`` (``kafka-consumer-groups``, ``kafka-topics``, ``kafka-acls``, ...), each
``java -cp <tools>/* <main class> "$@"`` with the tools' quiet logging. They take the same
flags as the scripts of a Kafka distribution; against a secured cluster pass
``--command-config`` (``make up`` with ``KAFKA_LOCAL_SECURE`` writes one for its admin).

Command line (``make jars``, hence ``make up``)::

    python -m ops.kafka_tools [--state DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ops.kafka_local import DEFAULT_STATE, ROOT, BrokerError, require_tools

POM = ROOT / "kafka" / "tools-pom.xml"
# wrapper name -> main class, as bin/*.sh of the Kafka 3.9 distribution name them
TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "kafka.tools.ConsoleProducer",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-transactions": "org.apache.kafka.tools.TransactionsCommand",
    "kafka-delete-records": "org.apache.kafka.tools.DeleteRecordsCommand",
    "kafka-log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "kafka-acls": "kafka.admin.AclCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-broker-api-versions": "kafka.admin.BrokerApiVersionsCommand",
    "kafka-reassign-partitions": "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
}
LOG4J = """\
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stderr.Target=System.err
"""
WRAPPER = """\
#!/bin/sh
# {name}: Kafka {version}'s own tool ({main}), resolved by `make jars` (ops.kafka_tools).
exec java ${{KAFKA_TOOLS_HEAP_OPTS:--Xmx256m}} -Djava.awt.headless=true \\
  -Dlog4j.configuration=file:{log4j} -cp '{tools}/*' {main} "$@"
"""


def tools_dir(state_dir: Path = DEFAULT_STATE) -> Path:
    return state_dir / "kafka" / "tools"


def bin_dir(state_dir: Path = DEFAULT_STATE) -> Path:
    return state_dir / "kafka" / "bin"


def ensure_tools(state_dir: Path = DEFAULT_STATE) -> Path:
    """Resolve the tools' jars (once) and (re)write the wrappers; returns the bin dir."""
    from ops.kafka_local import KAFKA_VERSION

    jars = tools_dir(state_dir)
    marker = jars / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if not (marker.is_file() and marker.read_text().strip() == digest
            and any(jars.glob("kafka-tools-*.jar"))):
        require_tools()
        if jars.exists():
            shutil.rmtree(jars)
        jars.mkdir(parents=True)
        result = subprocess.run(["mvn", "-q", "-B", "-f", str(POM),
                                 "dependency:copy-dependencies", f"-DoutputDirectory={jars}",
                                 "-DincludeScope=runtime"], capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError("mvn could not resolve Kafka's tools:\n" + result.stdout[-3000:]
                              + result.stderr[-2000:])
        marker.write_text(digest)
    log4j = jars / "tools-log4j.properties"
    _write_if_changed(log4j, LOG4J, 0o644)
    out = bin_dir(state_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, main in TOOLS.items():
        _write_if_changed(out / name, WRAPPER.format(name=name, version=KAFKA_VERSION,
                                                     main=main, log4j=log4j, tools=jars), 0o755)
    return out


def _write_if_changed(path: Path, text: str, mode: int) -> None:
    """``path`` holds ``text`` with ``mode``, never seen half-written: another process may
    be running the wrapper, or installing the same ones (the test suite's two processes).
    A rewrite in place emptied the script under a running shell ("Text file busy", or an
    empty run); an unchanged file is left alone, a changed one replaced at once."""
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.kafka_tools",
                                     description="Install Kafka's CLI tools under the state dir.")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    args = parser.parse_args(argv)
    try:
        out = ensure_tools(args.state)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kafka tools: {out}/ ({', '.join(sorted(TOOLS))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
