"""A key pasted into a file-path setting (as easy in a Kubernetes Secret as mounting it) is
refused naming the setting, and never quoted: a PEM was printed whole ("no such file:
-----BEGIN PRIVATE KEY-----…"), and base64 of one was longer than a file name may be, so
``Path.is_file()`` raised "File name too long" — a traceback with the key in it, exit 1,
restarted for ever, the key in the log each time."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.envparse import load_dotenv_file
from common.errors import ConfigError
from common.settings import KafkaSettings, SalesforceSettings

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = _RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                         serialization.NoEncryption()).decode()
B64 = base64.b64encode(PEM.encode()).decode()
WRAPPED = "\n".join(B64[i:i + 76] for i in range(0, len(B64), 76)) + "\n"  # `base64 key.pem`
BODY = "".join(PEM.splitlines()[1:-1])  # the key itself, without its armour lines
OPENSSH = "".join(_RSA.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.OpenSSH,
                                     serialization.NoEncryption()).decode().splitlines()[1:-1])
PASTED = {"pem": PEM, "base64": B64, "wrapped base64": WRAPPED,
          # the armour dropped: lines joined by blanks (a YAML folded scalar) or by a
          # literal \n, the DER's base64 unpadded (RawStdEncoding), an OpenSSH key's body
          "body joined by blanks": " ".join(PEM.splitlines()[1:-1]),
          "body joined by a literal \\n": "\\n".join(PEM.splitlines()[1:-1]),
          "unpadded base64": BODY.rstrip("="), "openssh body": OPENSSH}
SF = {"SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com"}


def leaks(message: str) -> str | None:
    """A slice (12 characters) of the key or of its base64 found in ``message``."""
    for secret in (BODY, B64, OPENSSH):
        for i in range(len(secret) - 11):
            if secret[i:i + 12] in message:
                return secret[i:i + 12]
    return None


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "key.pem"
    key.write_text(PEM)
    return {"key": str(key)}


def load(variable: str, value: str, files: dict[str, str]) -> None:
    """The section of ``variable`` with ``value`` in it, every other setting valid."""
    if variable in ("SF_PRIVATE_KEY_PATH", "SF_CA_BUNDLE"):
        key = {} if variable == "SF_PRIVATE_KEY_PATH" else {"SF_PRIVATE_KEY_PATH": files["key"]}
        SalesforceSettings.load({**SF, **key, variable: value})
        return
    # a client certificate needs both files: the other one is a real file
    pair = {"KAFKA_SSL_CERTIFICATE_LOCATION": "KAFKA_SSL_KEY_LOCATION",
            "KAFKA_SSL_KEY_LOCATION": "KAFKA_SSL_CERTIFICATE_LOCATION"}
    other = {pair[variable]: files["key"]} if variable in pair else {}
    KafkaSettings.load({"KAFKA_SECURITY_PROTOCOL": "SSL", **other, variable: value})


@pytest.mark.parametrize("pasted", list(PASTED))
@pytest.mark.parametrize("variable", [
    "SF_PRIVATE_KEY_PATH", "SF_CA_BUNDLE", "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION", "SCHEMA_REGISTRY_CA_LOCATION"])
def test_a_key_pasted_into_a_path_setting_is_refused_and_never_shown(
        variable: str, pasted: str, files: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(variable, PASTED[pasted], files)
    message = str(info.value)
    assert message.startswith(f"{variable}: "), message
    assert "value not shown: it looks like key material" in message, message
    assert leaks(message) is None, f"{leaks(message)!r} of the key in {message!r}"
    assert "\n" not in message


def test_the_private_key_path_points_to_the_variable_for_the_key_itself(
        files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="set SF_PRIVATE_KEY_BASE64") as info:
        load("SF_PRIVATE_KEY_PATH", B64, files)
    assert leaks(str(info.value)) is None


def test_an_env_file_setting_holding_key_material_is_not_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for value in PASTED.values():
        monkeypatch.setenv("SFPROV_ENV_FILE", value)
        with pytest.raises(ConfigError) as info:
            load_dotenv_file()
        message = str(info.value)
        assert message.startswith("SFPROV_ENV_FILE: ") and leaks(message) is None, message


@pytest.mark.parametrize("path", ["/nonexistent/ca.pem", "/etc/sfprov/secrets/salesforcekey",
                                  "keys/sf.pem",
                                  # base64's characters, but no key: a typo is still shown
                                  "secrets/kafka/production/clusterca",
                                  "secrets/kafka/production/clustercaXX",
                                  "/" + "/".join(["deep-directory-name"] * 16) + "/ca.pem"])
def test_a_path_that_is_no_file_is_still_quoted(path: str, files: dict[str, str]) -> None:
    for variable in ("SF_PRIVATE_KEY_PATH", "SF_CA_BUNDLE", "KAFKA_SSL_CA_LOCATION"):
        with pytest.raises(ConfigError, match=f"^{variable}: no such file: {path}$"):
            load(variable, path, files)


def test_a_name_too_long_is_a_config_error_not_a_traceback(files: dict[str, str]) -> None:
    long = "/tmp/" + "a" * 300  # no key, but no name the system takes either
    with pytest.raises(ConfigError, match="^KAFKA_SSL_CA_LOCATION: "):
        load("KAFKA_SSL_CA_LOCATION", long, files)


def test_short_base64_key_material_is_not_shown_either(files: dict[str, str]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    der = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    short = base64.b64encode(der).decode()  # 64 characters: a name the system takes
    with pytest.raises(ConfigError) as info:
        load("KAFKA_SSL_KEY_LOCATION", short, files)
    assert "value not shown" in str(info.value) and short[8:20] not in str(info.value)


@pytest.mark.parametrize("variable", ["SF_PRIVATE_KEY_PATH", "SF_CA_BUNDLE",
                                      "KAFKA_SSL_CA_LOCATION", "SCHEMA_REGISTRY_CA_LOCATION"])
def test_a_file_this_user_cannot_read_is_named_as_such(variable, files, monkeypatch) -> None:
    """A 0600 file mounted into a container of another uid: the CA's PermissionError was a
    traceback (exit 1, restarted for ever), the key's read as 'not an unencrypted PEM
    private key', sending the operator after the wrong problem."""
    unreadable = str(Path(files["key"]).with_name("mounted.pem"))
    Path(unreadable).write_text(PEM)
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if str(self) == unreadable:
            raise PermissionError(13, "Permission denied", unreadable)
        return real_open(self, *args, **kwargs)
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigError, match=f"^{variable}: cannot read {unreadable} "
                                          r"\(Permission denied\): this process runs as uid"):
        load(variable, unreadable, files)
