"""asyncio adapters around the sans-IO SIP core: sockets in, bytes to the core, bytes out."""
