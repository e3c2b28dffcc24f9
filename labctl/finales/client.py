"""An async client of FINALES2's REST API (httpx), the calls a tenant needs.

It logs in with the OAuth2 password form and logs in again whenever a call answers 401
(the JWT expired, or the server restarted with another key). A server that is down or
restarting is waited for with capped backoff (connection refused: nothing was sent, so any
call may be sent again; a GET also after a lost answer or a 5xx), so a tenant keeps serving
through FINALES2 restarts. A POST whose answer was lost is NOT sent again here: it may have
been done, and only the caller can check. Any other HTTP error is raised as FinalesError
with FINALES's `detail`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

log = logging.getLogger("labctl.finales.client")

#: a call that got no answer is tried again after 0.2, 0.4 ... up to this many seconds
MAX_BACKOFF_S = 5.0


class FinalesError(Exception):
    """FINALES2 refused a call (HTTP status and its `detail`)."""

    def __init__(self, method: str, path: str, status: int, detail: Any):
        super().__init__(f"FINALES2 {method} {path}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class FinalesClient:
    """`async with FinalesClient(url, user, password) as c: await c.pending_requests()`."""

    def __init__(self, server: str, username: str, password: str, *,
                 timeout_s: float = 30.0, retry_for_s: float | None = None):
        self.server = server.rstrip("/")
        self.username = username
        self._password = password
        self._token: str | None = None
        #: give up on an unreachable server after this long (None: never)
        self.retry_for_s = retry_for_s
        self._http = httpx.AsyncClient(base_url=self.server, timeout=timeout_s)
        self.logins = 0

    async def __aenter__(self) -> FinalesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- plumbing ------------------------------------------------------------------------
    async def login(self) -> None:
        r = await self._send("POST", "/user_management/authenticate",
                             data={"username": self.username, "password": self._password},
                             auth=False)
        if r.status_code != 200:
            raise FinalesError("POST", "/user_management/authenticate", r.status_code,
                               _detail(r))
        self._token = r.json()["access_token"]
        self.logins += 1

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        """One API call, logged in; the decoded JSON answer."""
        if self._token is None:
            await self.login()
        r = await self._send(method, path, **kw)
        if r.status_code == 401:  # token expired or the server's key changed
            await self.login()
            r = await self._send(method, path, **kw)
        if r.status_code >= 400:
            raise FinalesError(method, path, r.status_code, _detail(r))
        return r.json()

    async def _send(self, method: str, path: str, *, auth: bool = True,
                    **kw: Any) -> httpx.Response:
        delay = 0.2
        waited = 0.0
        while True:
            headers = {"Authorization": f"Bearer {self._token}"} if auth and self._token else {}
            try:
                r = await self._http.request(method, path, headers=headers, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
                if self.retry_for_s is not None and waited >= self.retry_for_s:
                    raise
                log.warning("FINALES2 %s %s: %s; again in %.1f s", method, path, exc, delay)
            except httpx.TransportError:
                if method != "GET":  # it may have been done: the caller checks, not us
                    raise
                if self.retry_for_s is not None and waited >= self.retry_for_s:
                    raise
                log.warning("FINALES2 %s %s: no answer; again in %.1f s", method, path, delay)
            else:
                if r.status_code < 500 or method != "GET":
                    return r
                if self.retry_for_s is not None and waited >= self.retry_for_s:
                    return r
                log.warning("FINALES2 %s %s: HTTP %s; again in %.1f s", method, path,
                            r.status_code, delay)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, MAX_BACKOFF_S)

    # -- the API -------------------------------------------------------------------------
    async def pending_requests(self, quantity: str | None = None,
                               method: str | None = None) -> list[dict[str, Any]]:
        q = {k: v for k, v in (("quantity", quantity), ("method", method)) if v}
        return list(await self.call("GET", "/pending_requests/", params=q))

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        return await self.call("GET", f"/requests/{request_id}")  # type: ignore[no-any-return]

    async def set_request_status(self, request_id: str, status: str, message: str) -> Any:
        return await self.call("POST", f"/requests/{request_id}/update_status/",
                               params={"request_id": request_id, "new_status": status,
                                       "status_change_message": message})

    async def post_request(self, quantity: str, method: str, parameters: dict[str, Any],
                           tenant_uuid: str) -> str:
        return str(await self.call("POST", "/requests/", json={
            "quantity": quantity, "methods": [method], "parameters": {method: parameters},
            "tenant_uuid": tenant_uuid}))

    async def post_result(self, body: dict[str, Any]) -> str:
        return str(await self.call("POST", "/results/", json=body))

    async def result_for(self, request_id: str) -> dict[str, Any] | None:
        """The first result posted for a request, or None."""
        return await self.call("GET", f"/results_requested/{request_id}")  # type: ignore[no-any-return]

    async def get_result(self, result_id: str) -> dict[str, Any] | None:
        return await self.call("GET", f"/results/{result_id}")  # type: ignore[no-any-return]

    async def all_results(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/results_requested/"))

    async def tenants(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/tenants/"))

    async def capabilities(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/capabilities/"))


def _detail(r: httpx.Response) -> Any:
    try:
        return r.json().get("detail", r.text)
    except ValueError:
        return r.text
