"""Webhook destinations: where changes are pushed (README, Getting changes out)."""
