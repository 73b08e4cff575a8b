"""The Salesforce write-back sink: outcomes topic → Order/Opportunity via sObject Collections.

Modules: :mod:`sinks.mapping` (outcome → record updates, pure), :mod:`sinks.batch` (merging
and which offsets may be committed, pure), :mod:`sinks.writer` (one flush → per-record
verdicts), :mod:`sinks.fence` (Salesforce refuses an older outcome over a newer one: the
field, the rule, the superseded verdict), :mod:`sinks.app` (the consumer loop),
``python -m sinks run`` (the process).
"""
