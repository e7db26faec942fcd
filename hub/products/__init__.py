"""Therapy products as data: stages, checkpoints, clocks, temperature legs, release panels."""
