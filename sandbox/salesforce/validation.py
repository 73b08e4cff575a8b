"""The seeded org's validation rules, evaluated on every save as Salesforce does.

Salesforce runs an object's active validation rules on insert and update, after its own
checks (field types, required fields) and before the record is saved. A rule whose formula
is true refuses the save with ``FIELD_CUSTOM_VALIDATION_EXCEPTION``, the rule's error
message, and ``fields`` = the rule's error location when that is a field. Inside sObject
Collections with ``allOrNone: false`` that is one record's error; the other records are
saved. ``PRIORVALUE(f)`` is the value before this save (blank on insert).

The org has one rule, on Order and on Opportunity — the fence of the write-back sink
(README, *Real Salesforce and WHMCS*)::

    Sfprov_Outcome_Not_Older   error location: Activation_Outcome_Ms__c
    AND(
      NOT(ISBLANK(PRIORVALUE(Activation_Outcome_Ms__c))),
      NOT(ISBLANK(Activation_Outcome_Ms__c)),
      Activation_Outcome_Ms__c < PRIORVALUE(Activation_Outcome_Ms__c)
    )
    message: SFPROV_SUPERSEDED: a newer provisioning outcome is already written on this record

An older outcome is refused; an equal one (a redelivery) and a newer one pass, and so does
every save that does not set the field (it keeps its prior value).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import SfError

OUTCOME_MS_FIELD = "Activation_Outcome_Ms__c"
SUPERSEDED_MESSAGE = ("SFPROV_SUPERSEDED: a newer provisioning outcome is already written on "
                      "this record")


@dataclass(frozen=True)
class Rule:
    name: str
    objects: tuple[str, ...]
    #: (prior record, record as it would be saved) → True refuses the save
    refuses: Callable[[dict, dict], bool]
    message: str
    error_field: str | None = None


def _older_outcome(prior: dict, record: dict) -> bool:
    before, after = prior.get(OUTCOME_MS_FIELD), record.get(OUTCOME_MS_FIELD)
    return before is not None and after is not None and after < before


RULES: tuple[Rule, ...] = (
    Rule("Sfprov_Outcome_Not_Older", ("Order", "Opportunity"), _older_outcome,
         SUPERSEDED_MESSAGE, OUTCOME_MS_FIELD),
)


def check(sobject: str, prior: dict, record: dict) -> None:
    """Raise the first refusing rule's error (``prior`` is ``{}`` on insert)."""
    for rule in RULES:
        if sobject in rule.objects and rule.refuses(prior, record):
            raise SfError("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message,
                          [rule.error_field] if rule.error_field else [])
