import base64

import pytest

from sandbox.whmcs import phpserial as reference
from streams.mapping import MappingError, map_order
from tests.streams.factories import ORDER_ID, item, order, product


def codes(o):
    with pytest.raises(MappingError) as info:
        map_order(o, idem_key="k")
    return info.value.code


def test_service_activation_and_addons_map_per_reference():
    o = order(item(product("INET-1G", pid=1, options='{"1": "2", "2": "5"}'), qty=1.0),
              item(product("INET-ACT", pid=5.0, cycle="One-time", item_class="Activation")),
              item(product("ADDON-IPV4", pid="1", item_class="Add-on"), qty=2),
              item(product("VPN", pid=4, cycle="Annually"), qty=3))
    req = map_order(o, idem_key="IK-1", payment_method="banktransfer", no_invoice=True)
    p = req.params()
    assert p["clientid"] == 1001 and p["paymentmethod"] == "banktransfer"
    assert p["pid"] == [1, 4, 5]  # the Services first (in their order), then Activation
    assert p["billingcycle"] == ["monthly", "annually", "onetime"]
    assert p["qty"] == [1, 3, 1]
    assert p["addons"] == ["1,1", None, None]  # add-ons ride on the first Service item
    assert reference.loads(base64.b64decode(p["configoptions"][0])) == {1: "2", 2: "5"}
    assert p["configoptions"][1:] == [None, None]
    assert p["notes"] == f"sfOrderId={ORDER_ID} idemKey=IK-1"
    assert p["noinvoice"] is True and p["noemail"] is True


def test_add_ons_of_a_service_ordered_twice_are_made_once_each_in_whmcs(tmp_path):
    """WHMCS gives every service of a line all of the line's add-ons: the add-ons on a line
    of 2 services were made twice (2 ordered, 4 billed). Counted by the WHMCS sandbox."""
    from common.whmcs import encode_form
    from sandbox.whmcs.actions import Context, dispatch
    from sandbox.whmcs.forms import parse_form
    from sandbox.whmcs.store import Store

    o = order(item(product("SIM-20G", pid=3), qty=2),
              item(product("SUPPORT", pid=2, item_class="Add-on"), qty=2))
    p = map_order(o, idem_key="k").params()
    assert p["pid"] == [3, 3] and p["qty"] == [1, 1] and p["addons"] == ["2,2", None]

    store = Store(str(tmp_path / "whmcs.db"))
    store.seed(10)
    client = next(c.id for c in store.clients.values() if c.status == "Active")
    made = dispatch(store, parse_form(encode_form(
        {"action": "AddOrder", **p, "clientid": client, "responsetype": "json"})), Context())
    assert made["result"] == "success", made
    assert len(str(made["serviceids"]).split(",")) == 2
    assert len(str(made["addonids"]).split(",")) == 2


def test_the_rest_of_a_service_item_follows_its_add_on_line():
    o = order(item(product("INET-1G", pid=1), qty=3),
              item(product("VPN", pid=4, cycle="Annually")),
              item(product("ADDON-IPV4", pid=1, item_class="Add-on")))
    p = map_order(o, idem_key="k").params()
    assert p["pid"] == [1, 1, 4] and p["qty"] == [1, 2, 1]
    assert p["billingcycle"] == ["monthly", "monthly", "annually"]
    assert p["addons"] == ["1", None, None]


def test_an_installation_fee_listed_first_does_not_become_the_first_service():
    """WHMCS creates services in pid[] order and the Opportunity links to the first
    (WHMCS_Service_ID__c): an Activation item the query returned first made the one-time
    fee the Opportunity's service."""
    o = order(item(product("INET-ACT", pid=5, cycle="One-time", item_class="Activation")),
              item(product("INET-1G", pid=1)))
    assert map_order(o, idem_key="k").params()["pid"] == [1, 5]


def test_no_config_options_means_no_configoptions_param():
    assert "configoptions" not in map_order(order(), idem_key="k").params()
    assert "addons" not in map_order(order(), idem_key="k").params()


@pytest.mark.parametrize("client,code", [(None, "MISSING_WHMCS_CLIENT"),
                                         ("", "MISSING_WHMCS_CLIENT"),
                                         ("  ", "MISSING_WHMCS_CLIENT"),
                                         ("abc", "INVALID_WHMCS_CLIENT"),
                                         ("-4", "INVALID_WHMCS_CLIENT"),
                                         (12.5, "INVALID_WHMCS_CLIENT"),
                                         # past any WHMCS id (and the outcome's Avro long)
                                         ("99999999999999999999", "INVALID_WHMCS_CLIENT"),
                                         ("1e20", "INVALID_WHMCS_CLIENT"),
                                         (2**31, "INVALID_WHMCS_CLIENT")])
def test_bad_client(client, code):
    assert codes(order(client=client)) == code


def test_missing_account_relationship():
    o = order()
    o["Account"] = None
    assert codes(o) == "MISSING_WHMCS_CLIENT"


@pytest.mark.parametrize("prod,code", [
    (product(pid=None), "MISSING_PRODUCT_MAPPING"),
    (product(pid="x"), "MISSING_PRODUCT_MAPPING"),
    (product(pid=None, item_class="Add-on"), "MISSING_PRODUCT_MAPPING"),
    (product(cycle=None), "INVALID_BILLING_CYCLE"),
    (product(cycle="Weekly"), "INVALID_BILLING_CYCLE"),
    (product(item_class=None), "UNKNOWN_ITEM_CLASS"),
    (product(item_class="Bundle"), "UNKNOWN_ITEM_CLASS"),
    (product(options="{router: wifi6"), "INVALID_CONFIG_OPTIONS"),
    (product(options="[1, 2]"), "INVALID_CONFIG_OPTIONS"),
    (product(options='{"1": {"a": 1}}'), "INVALID_CONFIG_OPTIONS"),
    (product(options='{"one": "2"}'), "INVALID_CONFIG_OPTIONS"),
    (product(options='{"1": null}'), "INVALID_CONFIG_OPTIONS"),
    # keys WHMCS would take as text, matching no option id
    (product(options='{"05": "2"}'), "INVALID_CONFIG_OPTIONS"),
    (product(options='{"5.0": "2"}'), "INVALID_CONFIG_OPTIONS"),
    # Unicode digits pass str.isdigit()/float() but phpserial sends them as text keys
    (product(options='{"\uff11\uff12": "2"}'), "INVALID_CONFIG_OPTIONS"),  # full-width "12"
    (product(options='{"\u0661\u0662": "2"}'), "INVALID_CONFIG_OPTIONS"),  # Arabic-Indic "12"
    (product(options='{"1\u0662": "2"}'), "INVALID_CONFIG_OPTIONS"),  # mixed ASCII + Arabic-Indic
    (product(options='{"12 ": "2"}'), "INVALID_CONFIG_OPTIONS"),
    (product(pid=2**31), "MISSING_PRODUCT_MAPPING"),
    # a RecursionError and a UnicodeEncodeError once escaped mapping: a worker-error dead
    # letter after three attempts, no outcome, the Order left Activating
    (product(options='{"1":' * 1000 + '1' + '}' * 1000), "INVALID_CONFIG_OPTIONS"),
    (product(options='{"7": "\\ud83d"}'), "INVALID_CONFIG_OPTIONS"),  # half an emoji
    # beyond PHP's integers: unserialize clamps it, WHMCS got another value (mapping review)
    (product(options='{"7": 99999999999999999999}'), "INVALID_CONFIG_OPTIONS"),
    (product(options='{"7": -9223372036854775809}'), "INVALID_CONFIG_OPTIONS"),
])
def test_bad_items(prod, code):
    assert codes(order(item(prod))) == code


@pytest.mark.parametrize("qty", [0, -1, 1.5, None, "two", 1001, 1e9])
def test_bad_quantity(qty):
    assert codes(order(item(qty=qty))) == "INVALID_QUANTITY"


def test_no_items():
    o = order()
    o["OrderItems"] = None
    assert codes(o) == "NO_ITEMS"


def test_addon_without_service():
    o = order(item(product("ACT", cycle="One-time", item_class="Activation")),
              item(product("ADDON", item_class="Add-on")))
    assert codes(o) == "ADDON_WITHOUT_SERVICE"
    assert codes(order(item(product("ADDON", item_class="Add-on")))) == "ADDON_WITHOUT_SERVICE"


def test_error_message_names_the_item():
    with pytest.raises(MappingError) as info:
        map_order(order(item(product("LEGACY-PLAN", pid=None), item_id="802XYZ")), idem_key="k")
    assert "802XYZ" in info.value.message and "LEGACY-PLAN" in info.value.message


def test_the_largest_whmcs_ids_and_quantity_still_map():
    req = map_order(order(item(product(pid=2**31 - 1, options='{"2147483647": "x"}'),
                               qty=1000), client=str(2**31 - 1)), idem_key="k")
    assert req.params()["clientid"] == 2**31 - 1 and req.params()["qty"] == [1000]


def test_items_past_one_answer_are_refused_not_provisioned_in_part():
    """Salesforce pages a child subquery (``done: false`` and a ``nextRecordsUrl``): the
    items it left out would be missing from the WHMCS order, which would still say
    Provisioned."""
    o = order(item(), item())
    o["OrderItems"] = {**o["OrderItems"], "done": False, "totalSize": 250,
                       "nextRecordsUrl": "/services/data/v61.0/query/01g-2000"}
    assert codes(o) == "TOO_MANY_ITEMS"


# Text that float() reads but that is no plainly written whole number: "1e2" became client
# 100, "4_2" product 42 and "2147483647.0000001" was rounded to the largest id.
@pytest.mark.parametrize("client", ["1e2", "1E2", "4_2", "2147483647.0000001", "12.5e1",
                                    "0x10", "nan", "inf", ".5", "１２", "\u0661\u0662",
                                    "12\u00a0", "1 2", "--1", "+-1", "0", "0.0"])
def test_a_client_id_not_written_as_a_whole_number_is_invalid(client):
    assert codes(order(client=client)) == "INVALID_WHMCS_CLIENT"


@pytest.mark.parametrize("pid", ["1e2", "4_2", "2147483647.0000001", "1e0", "nan", "１２"])
def test_a_product_id_not_written_as_a_whole_number_is_no_mapping(pid):
    assert codes(order(item(product(pid=pid)))) == "MISSING_PRODUCT_MAPPING"
    addon = product("ADDON", pid=pid, item_class="Add-on")
    assert codes(order(item(), item(addon))) == "MISSING_PRODUCT_MAPPING"


@pytest.mark.parametrize("qty", ["2e0", "1_0", "3.0000001"])
def test_a_quantity_not_written_as_a_whole_number_is_invalid(qty):
    assert codes(order(item(qty=qty))) == "INVALID_QUANTITY"


@pytest.mark.parametrize("raw,expected", [("12", 12), (" 12 ", 12), ("+12", 12), ("12.0", 12),
                                          ("12.", 12), ("012", 12), ("\t7\n", 7),
                                          (12, 12), (12.0, 12), ("2147483647", 2**31 - 1),
                                          ("2147483647.000", 2**31 - 1)])
def test_whole_numbers_as_salesforce_sends_them_still_map(raw, expected):
    p = map_order(order(item(product(pid=raw)), client=raw), idem_key="k").params()
    assert p["clientid"] == expected and p["pid"] == [expected]


@pytest.mark.parametrize("item_class", ["Add-on", "Service"])
def test_a_product_id_that_is_not_an_id_is_named(item_class):
    """The reason shows what the field holds: "is empty" for 'ADD-7' sent agents to look for
    an empty field."""
    o = order(item(), item(product("X", pid="ADD-7", item_class=item_class)))
    with pytest.raises(MappingError) as err:
        map_order(o, idem_key="k")
    assert err.value.code == "MISSING_PRODUCT_MAPPING"
    assert "'ADD-7'" in err.value.message


def test_the_largest_order_fits_phps_max_input_vars():
    """WHMCS reads its API's form through PHP, which keeps the first ``max_input_vars`` (1000
    by default) fields and drops the rest silently — the credentials, sent last: the call
    would be refused as "Authentication Failed", and failed logins count towards WHMCS's IP
    ban. The largest Order the mapping accepts is 200 items (one answer of the guard's
    subquery; more is TOO_MANY_ITEMS), each with config options, add-ons on the first
    Service split into a line of its own: its AddOrder, with ``action`` and the four
    credential fields, must stay under that default."""
    from common.whmcs import encode_form

    items = [item(product(f"SVC-{n}", pid=n + 1, options='{"1": "2"}'), qty=2)
             for n in range(199)]
    o = order(*items, item(product("ADDON", pid=9, item_class="Add-on"), qty=3))
    p = map_order(o, idem_key="k").params()
    assert len(p["pid"]) == 200  # the first Service's add-on line split off
    fields = encode_form({"action": "AddOrder", **p}).count("&") + 1
    assert fields + 4 <= 1000, fields  # identifier, secret, accesskey, responsetype
