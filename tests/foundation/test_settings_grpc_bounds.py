"""``SF_PUBSUB_GRPC_KEEPALIVE_S`` goes to gRPC in ms as a C int
(:func:`connectors.pubsub.client.channel_options`): a value past 2**31 - 1 ms (2147484 s)
was accepted, then gRPC's OverflowError making the channel was a traceback, exit 1,
restarted for ever. It is refused at start, naming the variable."""

from __future__ import annotations

import grpc
import pytest

from common.errors import ConfigError
from common.settings import ConnectorSettings
from connectors.pubsub.client import channel_options


@pytest.mark.parametrize("value", ["2147484", "2147483.648", "1e300"])
def test_a_keepalive_grpc_cannot_take_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^SF_PUBSUB_GRPC_KEEPALIVE_S: at most 2147483\.647 s"):
        ConnectorSettings.load({"SF_PUBSUB_GRPC_KEEPALIVE_S": value})


def test_the_longest_keepalive_accepted_is_one_grpc_takes() -> None:
    longest = ConnectorSettings.load({"SF_PUBSUB_GRPC_KEEPALIVE_S": "2147483.647"})
    grpc.insecure_channel("localhost:1", options=channel_options(
        longest.grpc_keepalive_s)).close()
    with pytest.raises(OverflowError):  # the bound is gRPC's: one ms more is refused
        grpc.insecure_channel("localhost:1", options=channel_options(2147483.648)).close()
