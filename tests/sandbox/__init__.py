"""Tests of the local Salesforce and WHMCS sandboxes."""
