"""Media anchoring: terminate and bridge audio between legs that cannot talk directly."""
