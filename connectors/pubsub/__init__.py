"""Salesforce Pub/Sub API client: our own ``.proto``, generated stubs, one subscription."""
