"""The Avro schemas of every topic and of the platform event: the contract.

A package only so that the wheel carries the ``.avsc`` files (``common.avro`` reads them
from this directory, in a checkout and in an installed package alike).
"""
