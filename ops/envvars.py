"""`make up`'s own variables (``KAFKA_PORT``, ``KAFKA_CONTROLLER_PORT``,
``KAFKA_LOCAL_SECURE``, ``SFPROV_SANDBOX_REMOTE_KAFKA``, the sandboxes' ports and seed sizes,
``SFPROV_LOG_MAX_MB``: the size
over which the supervisor rotates a process's log, :func:`ops.supervisor.log_limit`), read as
the processes read their settings (:func:`common.envparse.read_field`): unset, empty or blank
is the default, and a value that does not parse is a :class:`~common.errors.ConfigError` naming the variable —
one line and exit 64 from an operator tool (:func:`common.envparse.exits_64_on_config_error`),
where a bare ``int()`` was a traceback naming nothing (and ``KAFKA_PORT=99999`` was taken)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from common.envparse import parse_bool, parse_fixed_port, parse_non_negative_int
from common.errors import ConfigError

T = TypeVar("T")


def value(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T]) -> T:
    """``env[name]`` parsed, or ``default`` when it is unset or blank."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: invalid value: {exc}") from None


def text(env: Mapping[str, str], name: str, default: T) -> str | T:
    """``env[name]`` as it is, or ``default`` when it is unset or blank."""
    raw = env.get(name)
    return raw if raw is not None and raw.strip() else default


def port(env: Mapping[str, str], name: str, default: int) -> int:
    """A port others connect to: 1-65535."""
    return value(env, name, default, parse_fixed_port)


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    return value(env, name, default, parse_bool)


def count(env: Mapping[str, str], name: str, default: int) -> int:
    """A number of things, 0 or more."""
    return value(env, name, default, parse_non_negative_int)
