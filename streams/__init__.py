"""The provisioning worker: a Faust app that dedupes, guards and provisions into WHMCS.

Layout: ``phpserial``/``mapping``/``decide`` are pure (no I/O); ``state`` types what is
remembered per Order; ``guard`` reads Salesforce (coalesced); ``provision`` talks to WHMCS;
``lease`` says whether this worker may still write for an Order; ``handler`` takes one event
end to end; ``lanes`` runs each Order's events in order and Orders side by side;
``checkpoint`` decides what may be committed; ``recovery`` is the sweep; ``faust_seam`` is
the one module that touches faust's and aiokafka's internals; ``app`` wires them; ``python
-m streams worker`` starts it.
"""
