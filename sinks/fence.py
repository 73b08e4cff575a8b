"""The outcome fence: Salesforce itself refuses an outcome older than the one a record holds.

The failure it closes: a sink holding a batch is paused (a GC pause, a frozen VM) past its
session timeout; the group gives its partitions to another sink, which writes the same
outcomes and newer ones; the first sink resumes and PATCHes its stale batch over them.
Any check made by the sink before its write leaves a window (the pause can land between
check and write), so the comparison is done by Salesforce, in the save itself:

1. every Order and Opportunity update carries the outcome's ``completed_at`` as epoch
   milliseconds in a Number(18, 0) field (``SINK_OUTCOME_MS_FIELD``, default
   ``Activation_Outcome_Ms__c``; a Number, not a DateTime: Salesforce stores DateTimes to
   the second, and two outcomes within one second would look equal);
2. a validation rule in the org refuses a save whose new value is smaller than
   ``PRIORVALUE`` (:func:`rule_formula`); equal passes (a redelivered outcome is rewritten
   harmlessly), and saves that do not set the field are untouched;
3. the sink recognises that refusal per record — ``FIELD_CUSTOM_VALIDATION_EXCEPTION``
   whose message holds :data:`SUPERSEDED_MARKER` — and settles the record as
   *superseded*: not written, not dead-lettered, not retried; counted
   (``sfprov_sink_superseded_total``), logged, and its offset committed.

No call is added per batch (the field rides along in the same PATCH); at start-up
:func:`start_check` describes Order and Opportunity once and stops the sink with one line
naming the missing field (when Salesforce cannot answer then, the check is made again
before the first write, under the sink's usual outage and API-limit pauses).

Pitfalls: "newer" is the worker's clock, so the fence orders two decisions of one Order
correctly as long as the workers' clocks differ by less than the time between those
decisions (which always includes a write-back and a new approval). Equal values must pass
(a save that leaves the field alone looks the same to the rule), so a stale rewrite of the
*same* outcome after the Order was re-approved is not refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from common.errors import ConfigError, SalesforceAuthError, SalesforceError
from sinks.mapping import OPPORTUNITY, ORDER

SUPERSEDED_MARKER = "SFPROV_SUPERSEDED"
VALIDATION_CODE = "FIELD_CUSTOM_VALIDATION_EXCEPTION"
RULE_NAME = "Sfprov_Outcome_Not_Older"
RULE_MESSAGE = f"{SUPERSEDED_MARKER}: a newer provisioning outcome is already written on this record"
FENCED_OBJECTS = (ORDER, OPPORTUNITY)
EPOCH_MS_DIGITS = 13  # digits of an epoch-ms value left of the point (until the year 2286)
log = logging.getLogger(__name__)


class Describer(Protocol):
    def describe(self, sobject: str) -> dict[str, Any]: ...


def rule_formula(field: str) -> str:
    """The validation rule's error condition, as entered in Setup (one per object)."""
    return (f"AND(NOT(ISBLANK(PRIORVALUE({field}))), NOT(ISBLANK({field})), "
            f"{field} < PRIORVALUE({field}))")


def is_superseded(code: str, message: str) -> bool:
    """True for the fence rule's refusal (a newer outcome is already on the record)."""
    return code == VALIDATION_CODE and SUPERSEDED_MARKER in message


def described_field(described: dict[str, Any], field: str) -> dict[str, Any] | None:
    """``field``'s entry in a describe answer (API names are case-insensitive), or None."""
    return next((f for f in described.get("fields", [])
                 if str(f.get("name", "")).lower() == field.lower()), None)


def number_size(found: dict[str, Any]) -> tuple[int, int]:
    """A Number field's size as Setup names it, ``(length, decimal places)``: describe's
    ``precision`` counts every digit, ``scale`` those right of the point."""
    precision, scale = int(found.get("precision") or 0), int(found.get("scale") or 0)
    return precision - scale, scale


def check_field(client: Describer, field: str) -> None:
    """Raise :class:`ConfigError` (naming the setting) unless ``field`` is an updatable
    Number field with room for epoch milliseconds (13 digits left of the point) on every
    fenced object, as describe answers; a :class:`SalesforceError` when describe does not
    answer (an outage, a login refused, a permission, an API version): the sink pauses on
    it as on any such call, instead of exiting 64 with a message that blamed this setting.
    A 404 names ``SF_API_VERSION`` (a version the org does not serve) and Read on the
    object, both of the installation, not of the field — the sink resumes once fixed."""
    for sobject in FENCED_OBJECTS:
        try:
            described = client.describe(sobject)
        except SalesforceError as exc:
            unseen = exc.status == 404 or exc.error_code == "NOT_FOUND"
            if exc.retryable or isinstance(exc, SalesforceAuthError) or not unseen:
                raise
            raise SalesforceError(
                f"cannot describe {sobject} to check the outcome fence field: Salesforce "
                "answers 404 (the org does not serve SF_API_VERSION, or the integration user "
                f"lost Read on {sobject}): {exc}", error_code=exc.error_code,
                status=exc.status, retryable=False) from exc
        found = described_field(described, field)
        if found is None:
            problem = "does not exist in the org (or the integration user cannot see it)"
        elif found.get("type") != "double":
            problem = f"is of type {found.get('type')}, not Number(18, 0)"
        elif number_size(found)[0] < EPOCH_MS_DIGITS:
            length, places = number_size(found)
            problem = (f"is Number({length}, {places}) (describe: precision "
                       f"{found.get('precision')}, scale {found.get('scale')}): epoch "
                       f"milliseconds need {EPOCH_MS_DIGITS} digits left of the decimal point, "
                       "so every write would fail; make it Number(18, 0)")
        elif described.get("updateable") is False:
            problem = (f"is not updatable by the integration user (it lacks Update (Edit) on "
                       f"{sobject}: grant it in its profile or permission set)")
        elif not found.get("updateable"):
            problem = "is not updatable by the integration user (field-level security)"
        else:
            continue
        raise ConfigError(
            f"SINK_OUTCOME_MS_FIELD: {sobject}.{field} {problem}; add it with its validation "
            "rule (README: Real Salesforce and WHMCS), or set SINK_OUTCOME_FENCE=false to run "
            "without the protection against stale writes")
    log.info("outcome fence on: %s on %s holds the written outcome's completed_at; "
             "Salesforce refuses an older one", field, " and ".join(FENCED_OBJECTS))


def write_access_problem(client: Describer, sobject: str, fields: Iterable[str]) -> str | None:
    """Whether the integration user may still update ``sobject`` and each of ``fields``, as
    describe tells (the start-up check's logic, for what a refused write set): None when it
    may — a per-record refusal is then about that record (a sharing rule, a record deleted
    or of another type) — else what is missing and what to grant. Raises the
    :class:`SalesforceError` when describe cannot answer (an outage, the API limit, a login
    refused): the sink then cannot tell, and decides nothing either way."""
    try:
        described = client.describe(sobject)
    except SalesforceError as exc:
        if exc.retryable or isinstance(exc, SalesforceAuthError):
            raise
        if exc.status == 404 or exc.error_code == "NOT_FOUND":  # the object is hidden
            return (f"the integration user cannot read {sobject} (describe answers "
                    f"{exc.error_code or exc.status}): grant it Read and Update (Edit) on "
                    f"{sobject} in its profile or permission set")
        raise
    if described.get("updateable") is False:
        return (f"the integration user may not update {sobject}: grant it Update (Edit) on "
                f"{sobject} in its profile or permission set")
    for name in sorted(set(fields)):
        found = described_field(described, name)
        if found is None:
            return (f"{sobject}.{name} is not visible to the integration user (hidden by "
                    "field-level security, or deleted): grant it Read and Edit access to the "
                    "field, or create the field again")
        if not found.get("updateable"):
            return (f"{sobject}.{name} is read-only for the integration user: grant it Edit "
                    "access to the field (field-level security)")
    return None


def start_check(client: Describer, field: str | None) -> bool:
    """The start-up check: ``field`` None (the fence off) → a warning; otherwise
    :func:`check_field`. Returns True when Salesforce could not answer: the sink then makes
    the check before its first write, where a failed call pauses and retries as any other.
    Raises :class:`ConfigError` when the org lacks the field."""
    if field is None:
        log.warning("SINK_OUTCOME_FENCE is off: a sink paused past its session timeout can "
                    "write an older outcome over a newer one in Salesforce")
        return False
    try:
        check_field(client, field)
    except SalesforceError as exc:
        log.warning("cannot check the outcome fence field now; checking again before the "
                    "first write: %s", exc)
        return True
    return False
