"""HTTP API (aiohttp): health, registrations; presence and sessions come later."""
