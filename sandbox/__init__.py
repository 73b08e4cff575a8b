"""Local emulators of Salesforce and WHMCS.

A separate world: `make up` (without real credentials) and the tests point the pipeline at
these. Production packages (`common`, `connectors`, `streams`, `sinks`) never import
`sandbox`; only URLs and credentials tell the pipeline where it is.
"""
