"""Chairside: per-chair vital-signs monitoring (adjunct; not a validated medical device)."""
