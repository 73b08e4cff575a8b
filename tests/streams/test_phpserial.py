import base64

import pytest

from sandbox.whmcs import phpserial as reference
from streams.phpserial import b64_serialize, serialize


def test_scalars_as_php_writes_them():
    assert serialize(None) == b"N;"
    assert serialize(True) == b"b:1;"
    assert serialize(False) == b"b:0;"
    assert serialize(-7) == b"i:-7;"
    assert serialize(1.5) == b"d:1.5;"
    assert serialize("abc") == b's:3:"abc";'


def test_string_length_counts_utf8_bytes_not_characters():
    assert serialize("ルーター") == b's:12:"' + "ルーター".encode() + b'";'


def test_canonical_integer_string_keys_become_int_keys():
    assert serialize({"1": "2", "012": "x", "-0": "y", "-3": "z"}) == (
        b'a:4:{i:1;s:1:"2";s:3:"012";s:1:"x";s:2:"-0";s:1:"y";i:-3;s:1:"z";}')


def test_nested_array_and_base64_layer():
    value = {"7": {"a": 1}}
    assert base64.b64decode(b64_serialize(value)) == b'a:1:{i:7;a:1:{s:1:"a";i:1;}}'


@pytest.mark.parametrize("value", [{"1": "2"}, {"1": "3", "2": "5"}, {"3": "Wi-Fi ルーター"},
                                   {"10": 4, "11": True, "12": None, "13": 2.25}])
def test_cross_check_with_the_sandboxs_independent_unserializer(value):
    decoded = reference.loads(serialize(value))
    expected = {int(k): v for k, v in value.items()}
    assert decoded == expected


@pytest.mark.parametrize("bad", [object(), [1, 2], {1.5: "x"}, {True: "x"}])
def test_unsupported_values_raise(bad):
    with pytest.raises(TypeError):
        serialize(bad)


def test_integers_beyond_phps_are_refused_and_such_keys_stay_strings():
    """PHP clamps an integer beyond 64 bits to PHP_INT_MAX, and keeps such a key a string."""
    assert serialize({"9223372036854775807": 1}) == b'a:1:{i:9223372036854775807;i:1;}'
    assert serialize({"9223372036854775808": 1}) == b'a:1:{s:19:"9223372036854775808";i:1;}'
    assert serialize(-(2**63)) == b"i:-9223372036854775808;"
    for big in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError):
            serialize(big)
