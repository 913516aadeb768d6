"""The REST API of a test node, asynchronously, with the node's admin key."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.support.ucgate_process import UcgateProcess


async def api(
    node: UcgateProcess, method: str, path: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {node.api_key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://127.0.0.1:{node.http_port}{path}", json=body, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()
