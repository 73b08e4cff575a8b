"""WHMCS sandbox: a local emulator of the WHMCS external API (``/includes/api.php``).

Speaks the wire format of ``../shared/REFERENCE.md`` §4 so the pipeline's WHMCS client works
against it unchanged, keeps its state in SQLite, seeds from :mod:`sandbox.seed` (so it
agrees with the Salesforce sandbox), and misbehaves on request (:mod:`.faults`), including
commit-then-hang. Start it with ``python -m sandbox.whmcs serve`` or, from tests,
:func:`sandbox.whmcs.harness.whmcs_sandbox`.

Modules: ``phpserial`` (PHP serialize), ``forms`` (PHP bracket arrays), ``catalog``
(products/addons/cycles), ``store`` (SQLite), ``actions`` + ``listing`` (the API),
``faults``, ``server`` (the api.php handler), ``admin`` (``/__sandbox`` + serve),
``harness`` (subprocess handle), ``bench`` (load generator), ``__main__`` (CLI).
"""
