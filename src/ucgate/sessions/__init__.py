"""Omnichannel sessions: the model (sessions, channels), the routing engine, and metrics.

Pure, sans-IO code: stores, the HTTP API and the B2BUA glue build on it.
"""
