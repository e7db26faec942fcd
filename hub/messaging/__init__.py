"""Inbox (inbound, stored before interpretation), outbox relay, the bus, and idempotent consumers."""
