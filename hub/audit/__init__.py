"""Append-only, hash-chained audit trail (21 CFR Part 11 / Annex 11 / ALCOA+)."""
