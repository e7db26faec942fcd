"""Outbound side of the FHIR API: Subscription notifications (rest-hook, Standard Webhooks)."""
