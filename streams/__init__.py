"""The provisioning worker: a Faust app that dedupes, guards and provisions into WHMCS.

Layout: ``phpserial``/``mapping``/``decide`` are pure (no I/O); ``guard`` reads Salesforce;
``provision`` talks to WHMCS; ``tables`` holds the durable Faust tables; ``batch`` runs one
batch end to end; ``app`` wires the agent, timers and metrics; ``python -m streams worker``
starts it.
"""
