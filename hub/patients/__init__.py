"""Patients as the hospitals register them (ADT): create and update, never merge two people."""
