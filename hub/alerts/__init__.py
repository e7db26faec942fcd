"""Alerts: raised as events, recorded by a consumer, listed and acknowledged by people."""
