"""Calls: routing decisions, call records and their stores (the B2BUA's pure helpers)."""
