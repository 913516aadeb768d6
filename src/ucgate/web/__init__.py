"""The browser side of ucgate: the agent desk, the customer chat widget and the wallboard.

``config`` is the ``[web]`` section, ``tokens`` the HMAC-signed bearer tokens the pages use,
``chat`` the per-session chat relay, ``routes`` the aiohttp glue that serves the pages under
``static/`` and the /v1/auth, /v1/widget and /v1/chat routes.
"""
