"""Salesforce sandbox: a local emulator of the parts of Salesforce the pipeline touches.

OAuth 2.0 JWT bearer token endpoint, the REST API (SOQL query, sObject and sObject
Collections, composite, limits), the Order Approval Flow, and the Pub/Sub API gRPC
server, over one durable SQLite database. Start it with ``python -m sandbox.salesforce
serve``; drive it from tests with :mod:`sandbox.salesforce.harness`.
"""
