"""Helpers shared by the test suites (real external processes and the like)."""
