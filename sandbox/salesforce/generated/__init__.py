"""Generated Pub/Sub API stubs (see regen.py); do not edit by hand."""
