"""Every version of the versioned schemas (``common.avro.VERSIONED_SCHEMAS``: the connector's
own topics), the current one included, as ``<name>-<fingerprint>.avsc`` — the fingerprint is
CRC-64-AVRO of the schema's Parsing Canonical Form (``common.avro.fingerprint``), the value
of the ``sfprov.schema_fingerprint`` header of the records written with it. A reader decodes
a record with the version its header names as the writer's schema, so a field added (with a
default) to ``schemas/connector_offset.avsc`` still reads the positions already stored.

Never edit or delete a file here; when such a schema changes, add its new version (the test
``tests/foundation/test_schema_history.py`` names the file to add). A package only so that
the wheel carries the files.
"""
