"""Electronic signatures bound to the exact record version they sign (21 CFR 11.50/11.70/11.200)."""
