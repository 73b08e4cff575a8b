"""PHP serialize/unserialize as WHMCS's configoptions[] and customfields[] use it."""

from __future__ import annotations

import base64

import pytest

from sandbox.whmcs import phpserial
from sandbox.whmcs.forms import parse_form


def test_dumps_matches_php_output() -> None:
    # Byte-for-byte what PHP 8's serialize() prints for these values.
    assert phpserial.dumps({1: "2", 2: 5}) == b'a:2:{i:1;s:1:"2";i:2;i:5;}'
    assert phpserial.dumps({"12": "x", "012": "y"}) == b'a:2:{i:12;s:1:"x";s:3:"012";s:1:"y";}'
    assert phpserial.dumps(["a", True, None, 1.5]) == b'a:4:{i:0;s:1:"a";i:1;b:1;i:2;N;i:3;d:1.5;}'
    assert phpserial.dumps("日本") == b's:6:"\xe6\x97\xa5\xe6\x9c\xac";'


def test_round_trip_nested_and_unicode() -> None:
    value = {1: "Wi-Fi 6 router", "name": "日本語", 3: {0: 1, 1: [True, False]}, 4: -2.25}
    back = phpserial.loads(phpserial.dumps(value))
    assert back == {1: "Wi-Fi 6 router", "name": "日本語", 3: {0: 1, 1: {0: True, 1: False}},
                    4: -2.25}
    assert phpserial.b64loads(phpserial.b64dumps({1: 2})) == {1: 2}


def test_loads_string_with_quotes_and_semicolons_inside() -> None:
    raw = b'a:1:{s:3:"k;"";s:5:"a";}b";}'
    assert phpserial.loads(raw) == {'k;"': 'a";}b'}
    assert phpserial.dumps({'k;"': 'a";}b'}) == raw


@pytest.mark.parametrize("bad", [b'a:2:{i:1;s:1:"2";}', b's:5:"abc";', b"i:1;junk", b"O:8:",
                                 b"b:2;", b"x:1;", b'a:1:{d:1.0;i:1;}'])
def test_loads_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(phpserial.PhpSerialError):
        phpserial.loads(bad)


def test_b64loads_rejects_non_base64() -> None:
    with pytest.raises(phpserial.PhpSerialError):
        phpserial.b64loads("not base64!!")
    with pytest.raises(phpserial.PhpSerialError):
        phpserial.b64loads(base64.b64encode(b"not php").decode())


def test_parse_form_php_brackets() -> None:
    params = parse_form(b"action=AddOrder&pid[0]=1&pid[1]=5&qty[]=2&qty[]=3&addons[1]=1%2C2"
                        b"&notes=sfOrderId%3D801")
    assert params["pid"] == {"0": "1", "1": "5"}
    assert params["qty"] == {"0": "2", "1": "3"}
    assert params["addons"] == {"1": "1,2"}
    assert params["notes"] == "sfOrderId=801"
    assert parse_form("pid[5]=1&pid[]=2")["pid"] == {"5": "1", "6": "2"}
