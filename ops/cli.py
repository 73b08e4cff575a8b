"""``sfprov``: the operator CLI. ``sfprov --help`` and ``sfprov COMMAND --help`` say it all.

Every option can also come from the environment (shown as ``[env: VAR]`` in ``--help``);
the Kafka, Salesforce and WHMCS settings are the pipeline's own (``.env`` is read too).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka import KafkaException

from common.envparse import TOPIC_CHARS, environment, exits_64_on_config_error, parse_host_list
from common.errors import ConfigError, PipelineError
from common.settings import (
    RECONCILE_OLDER_THAN_MAX_S,
    KafkaSettings,
    SinkSettings,
    WorkerSettings,
)


class EnvDefault(str):
    """An option's default as read from its environment variable: :func:`add`'s parser
    tells it from a value typed on the command line, to name the variable when it fails."""


def add(parser: argparse.ArgumentParser, *flags: str, env: str | None = None,
        default: Any = None, help: str = "", **kwargs: Any) -> None:  # noqa: A002
    """An option whose default comes from ``env`` when set. The value is parsed only when the
    subcommand that has the option runs without it — a bad ``SFPROV_TAIL_LAST`` once
    stopped every command, ``--help`` included. A bad value: ConfigError naming the
    variable and the option, printed as one line by :func:`main` (exit 1)."""
    if env:
        raw = environment().get(env)
        if raw is not None and raw.strip():  # blank is unset, as for the processes
            default = EnvDefault(raw)  # argparse runs ``type`` on a str default when unused
            if kwargs.get("type") is not None:
                kwargs["type"] = _env_checked(kwargs["type"], env, _option_name(flags))
        help = f"{help} [env: {env}]"
    parser.add_argument(*flags, default=default, help=help, **kwargs)


def _option_name(flags: tuple[str, ...]) -> str:
    return next((f for f in flags if f.startswith("--")), flags[0])


def _env_checked(parse: Callable[[str], Any], env: str, option: str) -> Callable[[str], Any]:
    """``parse`` that, on a value from ``env``, fails with a ConfigError naming the variable
    (argparse would call it "argument --last", which the operator never typed)."""
    def parse_value(text: str) -> Any:
        if not isinstance(text, EnvDefault):
            return parse(text)
        try:
            return parse(str(text))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{env}: invalid value {str(text)!r} for {option}: {exc}"
                              ) from None
    # argparse names the type in its own message: "invalid int value: 'x'"
    parse_value.__name__ = getattr(parse, "__name__", "value")
    return parse_value


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """The pipeline's Kafka settings with the command line's options; without ``-b`` (or
    ``KAFKA_BOOTSTRAP_SERVERS``, also as ``make up`` recorded it), the local broker's
    address on ``KAFKA_PORT``."""
    from ops.kafka_local import local_bootstrap

    overrides = {"bootstrap_servers": args.bootstrap or local_bootstrap(environment())}
    if args.prefix is not None:
        overrides["topic_prefix"] = args.prefix
    return KafkaSettings.load(None, **overrides)


def worker_group(args: argparse.Namespace) -> str:
    return kafka_settings(args).topic(WorkerSettings.load().app_id)


def sink_group(args: argparse.Namespace) -> str:
    return kafka_settings(args).topic(SinkSettings.load().group_id)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: the longest duration an option takes (10 years: the connector's limit of
#: CONNECTOR_RECONCILE_OLDER_THAN_S too)
MAX_DURATION_S = RECONCILE_OLDER_THAN_MAX_S


def duration_s(text: str) -> float:
    """``30m``, ``2h``, ``1d``, ``90s`` or bare seconds → seconds; ValueError for anything
    else, a negative or a non-finite amount (``replay --from-time -6h``, ``reconcile
    --older-than 15m``). More than :data:`MAX_DURATION_S`: an ``ArgumentTypeError`` naming
    the limit (an option's parser passes it on as the usage error), not a ValueError that
    it would word as "expected a duration" — ``--older-than 1e9d`` ended in a traceback
    (its SOQL datetime out of range), ``--writeback-wait 1e12`` in ``time.sleep``'s."""
    text = text.strip()
    unit = _UNITS.get(text[-1:])
    seconds = float(text[:-1]) * unit if unit else float(text)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {text!r}")
    if seconds > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text!r} is more than the limit of "
                                         f"{MAX_DURATION_S:.0f} s (10 years)")
    return seconds


#: sfprov's bootstrap option (read early by :func:`given_bootstrap` too)
BOOTSTRAP_FLAGS = ("-b", "--bootstrap-server", "--bootstrap")


def bootstrap_servers(text: str) -> str:
    """``-b``: the processes' check of KAFKA_BOOTSTRAP_SERVERS, as a usage error — a bad one
    was waited on for ~10 s, then "cannot reach Kafka at localhost:notaport"."""
    try:
        return parse_host_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def topic_prefix(text: str) -> str:
    """``--prefix``: the characters a topic name may hold (KafkaSettings' check), as a usage
    error naming the option."""
    if text and not TOPIC_CHARS.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} begins every topic name, which may hold "
                                         "only letters, digits, '.', '_' and '-'")
    return text


def build_parser() -> argparse.ArgumentParser:
    from ops import acls, cmd_kafka, cmd_orders

    parser = argparse.ArgumentParser(
        prog="sfprov", description="Operate the Salesforce → Kafka → WHMCS provisioning "
        "pipeline: inspect topics, tail records, check lag, trace an order, replay, "
        "reconcile, handle dead letters, list the ACLs each process needs.")
    add(parser, *BOOTSTRAP_FLAGS, dest="bootstrap",
        env="KAFKA_BOOTSTRAP_SERVERS", metavar="HOST:PORT", type=bootstrap_servers,
        help="Kafka bootstrap servers (as Kafka's own tools take them)")
    add(parser, "--prefix", env="KAFKA_TOPIC_PREFIX", type=topic_prefix,
        help="topic and group name prefix")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
        *cmd_kafka.COMMANDS, *cmd_orders.COMMANDS, *acls.COMMANDS]
    for name, summary, configure in commands:
        p = sub.add_parser(name, help=summary, description=summary)
        configure(p)
    return parser


def given_bootstrap(argv: list[str]) -> str | None:
    """The ``-b`` of ``argv``, read before the settings are (None: not given)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument(*BOOTSTRAP_FLAGS, dest="bootstrap")
    try:
        known, _rest = early.parse_known_args(argv)
    except SystemExit:  # -b without a value: the real parser says so
        return None
    return known.bootstrap.strip() if known.bootstrap else None


def load_local_stack_env(argv: list[str] | None = None) -> None:
    """``make up`` records the pipeline's settings (its bootstrap address; in sandbox mode
    the sandboxes'; with a secured broker the read-only ops principal's credentials); use
    them as defaults. The sandboxes' win over .env, as for the pipeline they were written
    for (``ops.stack.sandbox_env``); the Kafka ones do not, as for ``make topics``
    (``ops.topics``): after .env named another broker, sfprov still went to the local one,
    and as the read-only principal over the admin's credentials in .env."""
    from ops.stack import recorded_env

    recorded = recorded_env()
    env = {k: v for k, v in environment().items() if v.strip()}  # blank is unset, as always
    bootstrap = "KAFKA_BOOTSTRAP_SERVERS"
    typed = given_bootstrap(argv or [])
    if typed:  # `sfprov -b other:9092`: the recorded credentials were sent there too
        env[bootstrap] = typed
    # the recorded credentials are the recorded broker's: not sent to another one
    same_broker = env.get(bootstrap, recorded.get(bootstrap)) == recorded.get(bootstrap)
    for key, value in recorded.items():
        if key.startswith("KAFKA_") and (key in env or not same_broker):
            continue
        if not os.environ.get(key, "").strip():  # an exported blank is unset too
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


# librdkafka's codes for "no broker answered" (refused, unresolvable, silent): the broker is
# away or the address is wrong, not a refusal of this client
_UNREACHABLE = {CKafkaError._TRANSPORT, CKafkaError._ALL_BROKERS_DOWN, CKafkaError._RESOLVE,
                CKafkaError._TIMED_OUT, CKafkaError._MSG_TIMED_OUT}


def kafka_failure(exc: KafkaException, args: argparse.Namespace | None) -> str:
    """The one line for a librdkafka error that reached :func:`main` (``list_topics``, an
    admin future, ``committed``… raise KafkaException and its subclasses — ConsumeError,
    ProduceError — wherever the CLI calls them): which broker, what it said."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], CKafkaError) else None
    reason = err.str() if err is not None else str(exc)
    try:
        where = kafka_settings(args).bootstrap_servers if args is not None else "?"
    except PipelineError:
        where = getattr(args, "bootstrap", None) or "?"
    if err is not None and err.code() in _UNREACHABLE:
        return f"cannot reach Kafka at {where}: {reason}"
    return f"Kafka at {where}: {reason}"


@exits_64_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    load_local_stack_env(argv)
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(attach_relative_times(argv))
        return int(args.func(args) or 0)
    except PipelineError as exc:  # a bad setting included: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:  # the broker away, a topic refused: one line as well
        print(f"error: {kafka_failure(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sfprov tail ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
