"""The parsing layer (common.envparse) and the settings whose values passed it and failed
later: a URL with an unencoded '/' in its password or a bad port (a raw httpx traceback
quoting part of the secret, restarted for ever), blank security switches read as "off", an
empty bootstrap item faust reads as 127.0.0.1, a negative standby count, an API version
with a "v"."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.envparse import hide_userinfo, parse_http_url
from common.errors import ConfigError
from common.settings import (
    CommonSettings,
    ConnectorSettings,
    KafkaSettings,
    SalesforceSettings,
    WhmcsSettings,
    WorkerSettings,
)

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption())
SF = {"SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com",
      "SF_PRIVATE_KEY_BASE64": base64.b64encode(_KEY).decode()}
WHMCS = {"WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "s"}


# -- 1. URLs: credentials that do not parse as credentials, ports that are not ports -------

@pytest.mark.parametrize("password", ["ab/cd", "ab#cd", "ab?cd", "2024/s3cret", "443#x",
                                      "8443?q"])
def test_a_password_with_an_unencoded_delimiter_is_refused_unshown(password):
    url = f"https://KEY:{password}@psrc.example.cloud"
    with pytest.raises(ConfigError) as info:
        KafkaSettings.load({"SCHEMA_REGISTRY_URL": url})
    message = str(info.value)
    assert message.startswith("SCHEMA_REGISTRY_URL:")
    assert "percent-encode the credentials ('/' as %2F, '#' as %23, '?' as %3F" in message
    assert password not in message and "ab" not in message and "KEY" not in message
    assert "\n" not in message


@pytest.mark.parametrize("name,section,base", [
    ("SF_LOGIN_URL", SalesforceSettings, SF),
    ("SFPROV_TRACING_OTLP_ENDPOINT", CommonSettings, {}),
    ("WHMCS_API_URL", WhmcsSettings, WHMCS),
])
def test_every_url_setting_refuses_a_slash_in_the_password(name, section, base):
    with pytest.raises(ConfigError, match=f"^{name}:") as info:
        section.load({**base, name: "https://gw:Pa55/w0rd@gateway.example.com"})
    assert "Pa55" not in str(info.value) and "w0rd" not in str(info.value)


@pytest.mark.parametrize("name,section,base,url", [
    ("SF_LOGIN_URL", SalesforceSettings, SF, "https://login.salesforce.com:443x"),
    ("SF_LOGIN_URL", SalesforceSettings, SF, "http://127.0.0.1:99999"),
    ("SCHEMA_REGISTRY_URL", KafkaSettings, {}, "http://registry:808l"),
    ("SCHEMA_REGISTRY_URL", KafkaSettings, {}, "http://registry:0"),
    ("SCHEMA_REGISTRY_URL", KafkaSettings, {}, "http://registry:65536"),
    ("SFPROV_TRACING_OTLP_ENDPOINT", CommonSettings, {}, "http://collector:43l8/v1/traces"),
    ("WHMCS_API_URL", WhmcsSettings, WHMCS, "http://w:8o/includes/api.php"),
])
def test_a_port_that_is_not_a_port_is_refused(name, section, base, url):
    with pytest.raises(ConfigError, match=f"^{name}:.*port"):
        section.load({**base, name: url})


def test_a_bad_port_next_to_credentials_does_not_show_them():
    with pytest.raises(ConfigError) as info:
        KafkaSettings.load({"SCHEMA_REGISTRY_URL": "https://KEY:S3CRET@h:80x"})
    assert "S3CRET" not in str(info.value) and "KEY" not in str(info.value)


@pytest.mark.parametrize("url", [
    "https://billing.example.com/includes/api.php?site=eu@corp",  # '@' legal past the host
    "https://billing.example.com:8443/api.php?user=ops@corp&x=1",
    "http://[::1]:8081", "https://[::1]:8081/", "http://registry:8081", "http://registry",
    "https://KEY:ab%2Fcd%23e%3Ff@psrc.example.cloud", "https://KEY:S3CRET@h:443/x",
    "http://127.0.0.1:65535/path?q=1",
])
def test_valid_urls_still_pass(url):
    assert KafkaSettings.load({"SCHEMA_REGISTRY_URL": url}).schema_registry_url == url
    assert parse_http_url(f"  {url} ") == url


def test_a_value_with_credentials_never_shows_them_in_a_repr():
    # even a value no parser saw (an override): credentials misread as host and path are
    # masked to their '@'; a legal '@' past the host leaves the URL as it is
    assert hide_userinfo("https://KEY:ab/cd@psrc.example.cloud") == \
        "https://***@psrc.example.cloud"
    assert hide_userinfo("https://u:2024/s3cret@h/x") == "https://***@h/x"
    assert hide_userinfo("https://KEY:S3CRET@h/x") == "https://***@h/x"
    assert hide_userinfo("https://h/x") == "https://h/x"
    assert hide_userinfo("https://h/?site=eu@corp") == "https://h/?site=eu@corp"
    assert hide_userinfo("https://u:p@h:8443/x?a=b@c") == "https://***@h:8443/x?a=b@c"
    text = repr(KafkaSettings.load({}, schema_registry_url="https://KEY:ab/cd@h"))
    assert "ab/cd" not in text and "KEY" not in text


# -- 3. standby replicas -------------------------------------------------------------------

def test_negative_standby_replicas_are_refused():
    # faust's assignor raised KeyError at every rebalance
    with pytest.raises(ConfigError, match="^WORKER_STANDBY_REPLICAS:"):
        WorkerSettings.load({"WORKER_STANDBY_REPLICAS": "-1"})
    assert WorkerSettings.load({"WORKER_STANDBY_REPLICAS": "0"}).standby_replicas == 0
    assert WorkerSettings.load({"WORKER_STANDBY_REPLICAS": "2"}).standby_replicas == 2


# -- 4. a blank value is unset -------------------------------------------------------------

@pytest.mark.parametrize("blank", [" ", "  ", "\t"])
def test_a_blank_security_switch_is_its_default_not_off(blank):
    kafka = KafkaSettings.load({"KAFKA_SSL_ENDPOINT_IDENTIFICATION": blank,
                                "KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert kafka.ssl_endpoint_identification is True
    assert ConnectorSettings.load({"SF_PUBSUB_TLS": blank}).pubsub_tls is True
    assert ConnectorSettings.load({"SF_PUBSUB_TLS": ""}).pubsub_tls is True
    assert ConnectorSettings.load({"SF_PUBSUB_TLS": " false "}).pubsub_tls is False


def test_a_blank_required_secret_is_not_set():
    with pytest.raises(ConfigError, match="^WHMCS_API_SECRET: required setting is not set"):
        WhmcsSettings.load({"WHMCS_API_URL": "http://w/includes/api.php",
                            "WHMCS_API_IDENTIFIER": "id", "WHMCS_API_SECRET": "   "})
    with pytest.raises(ConfigError, match="^KAFKA_SASL_PASSWORD: required"):
        KafkaSettings.load({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                            "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": " "})


# -- 5. bootstrap servers ------------------------------------------------------------------

@pytest.mark.parametrize("servers", ["a:9092,", "a:9092,,b:9092", ",a:9092", "a:9092, "])
def test_an_empty_bootstrap_item_is_refused(servers):
    # faust turned "kafka://" into 127.0.0.1:9092
    with pytest.raises(ConfigError, match="^KAFKA_BOOTSTRAP_SERVERS:.*empty"):
        KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": servers})


def test_bootstrap_items_are_stripped():
    kafka = KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": " a:9092 , b:9092"})
    assert kafka.bootstrap_servers == "a:9092,b:9092"


# -- 6. the guard linger -------------------------------------------------------------------

def test_a_negative_guard_linger_names_itself():
    with pytest.raises(ConfigError, match="^WORKER_GUARD_LINGER_S:"):
        WorkerSettings.load({"WORKER_GUARD_LINGER_S": "-1"})
    with pytest.raises(ConfigError, match="^WORKER_GUARD_LINGER_BUSY_S:"):
        WorkerSettings.load({"WORKER_GUARD_LINGER_S": "0.3", "WORKER_GUARD_LINGER_BUSY_S": "0.2"})


# -- 8. the REST API version ---------------------------------------------------------------

@pytest.mark.parametrize("version", ["v62.0", "62", "62.0/", "latest"])
def test_an_api_version_that_is_not_a_number_is_refused(version):
    # "v62.0" built /services/data/vv62.0/: 404 on every call
    with pytest.raises(ConfigError, match="^SF_API_VERSION:"):
        SalesforceSettings.load({**SF, "SF_API_VERSION": version})


def test_an_api_version_number_passes():
    assert SalesforceSettings.load({**SF, "SF_API_VERSION": " 61.0 "}).api_version == "61.0"
    assert SalesforceSettings.load(SF).api_version == "62.0"
