"""Registrar (RFC 3261 §10.3): the registration usage on top of the location service."""
