"""Reaching into a guest: the SSH session, per-VM identity (keys, seed disk), readiness, path mapping."""
