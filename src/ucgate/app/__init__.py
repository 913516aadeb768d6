"""Application layer: composition of the node (SIP runtime, services, HTTP)."""
