"""``sfprov``: the operator CLI. ``sfprov --help`` and ``sfprov COMMAND --help`` say it all.

Every option can also come from the environment (shown as ``[env: VAR]`` in ``--help``);
the Kafka, Salesforce and WHMCS settings are the pipeline's own (``.env`` is read too).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from common.errors import ConfigError, PipelineError
from common.settings import KafkaSettings, environment


def add(parser: argparse.ArgumentParser, *flags: str, env: str | None = None,
        default: Any = None, help: str = "", **kwargs: Any) -> None:  # noqa: A002
    """An option whose default comes from ``env`` when set (a bad value: ConfigError naming
    the variable, printed as one line by :func:`main`)."""
    if env:
        raw = environment().get(env)
        if raw not in (None, ""):
            try:
                default = raw if kwargs.get("type") is None else kwargs["type"](raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{env}: invalid value {raw!r}: {exc}") from None
        help = f"{help} [env: {env}]"
    parser.add_argument(*flags, default=default, help=help, **kwargs)


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    overrides = {}
    if args.bootstrap:
        overrides["bootstrap_servers"] = args.bootstrap
    if args.prefix is not None:
        overrides["topic_prefix"] = args.prefix
    return KafkaSettings.load(None, **overrides)


def build_parser() -> argparse.ArgumentParser:
    from ops import acls, cmd_kafka, cmd_orders

    parser = argparse.ArgumentParser(
        prog="sfprov", description="Operate the Salesforce → Kafka → WHMCS provisioning "
        "pipeline: inspect topics, tail records, check lag, trace an order, replay, "
        "reconcile, handle dead letters, list the ACLs each process needs.")
    add(parser, "-b", "--bootstrap-server", "--bootstrap", dest="bootstrap",
        env="KAFKA_BOOTSTRAP_SERVERS", metavar="HOST:PORT",
        help="Kafka bootstrap servers (as Kafka's own tools take them)")
    add(parser, "--prefix", env="KAFKA_TOPIC_PREFIX", help="topic and group name prefix")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
        *cmd_kafka.COMMANDS, *cmd_orders.COMMANDS, *acls.COMMANDS]
    for name, summary, configure in commands:
        p = sub.add_parser(name, help=summary, description=summary)
        configure(p)
    return parser


def load_local_stack_env() -> None:
    """In sandbox mode ``make up`` records the pipeline's settings; use them as defaults."""
    from ops.stack import PIPELINE_ENV

    if PIPELINE_ENV.exists():
        for line in PIPELINE_ENV.read_text().splitlines():
            key, _, value = line.partition("=")
            if key and key not in os.environ:
                os.environ[key] = value


_RELATIVE_TIME = re.compile(r"-\d+(\.\d+)?[smhd]")


def attach_relative_times(argv: list[str]) -> list[str]:
    """``--from-time -2h`` as ``--from-time=-2h``: argparse takes a value that starts with a
    dash for an option of its own ("expected one argument")."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--from-time" and _RELATIVE_TIME.fullmatch(arg):
            out[-1] = f"--from-time={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    load_local_stack_env()
    try:
        parser = build_parser()
        args = parser.parse_args(attach_relative_times(sys.argv[1:] if argv is None else argv))
        return int(args.func(args) or 0)
    except PipelineError as exc:  # a bad setting included: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sfprov tail ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
