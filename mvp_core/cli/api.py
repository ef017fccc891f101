"""The Ketter API over HTTP, with every failure turned into one readable ``ApiError``.

httpx's own exceptions and the API's error bodies (404/409 text, 422 lists of
``{loc, msg}``) are translated here, at the boundary, so commands only print
``str(error)``.
"""

from __future__ import annotations

from typing import Any

import httpx

DEFAULT_TIMEOUT_S = 15.0


class ApiError(Exception):
    """A request that did not succeed; ``str()`` is the line the operator sees."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def _detail(response: httpx.Response) -> str:
    """The API's reason, in one line: ``field: message`` for each 422 error."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for error in detail[:5]:
            if not isinstance(error, dict):
                continue
            loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
            field = ".".join(loc)
            msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{field}: {msg}" if field and not msg.startswith(field) else msg)
        return "; ".join(parts) or "invalid request"
    return str(detail)[:500] if detail is not None else response.reason_phrase


class KetterApi:
    """A thin client: one method per call the CLI makes; JSON in, JSON out."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                    transport=transport)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """The JSON answer (``raw``: the text as is), or ``ApiError``."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ApiError(f"cannot reach the Ketter API at {self.base_url} ({exc}); "
                           "is it running? (KETTER_API_URL)") from exc
        except httpx.TimeoutException as exc:
            raise ApiError(f"the Ketter API at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"request to {self.base_url} failed: {exc}") from exc
        if response.status_code == 401:
            raise ApiError("the API refused the token (set KETTER_API_TOKEN)", status_code=401)
        if response.status_code == 422:
            raise ApiError(f"invalid request: {_detail(response)}", status_code=422)
        if response.is_error and not (path == "/health" and response.status_code == 503):
            raise ApiError(_detail(response), status_code=response.status_code)
        if raw:
            return response.text
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"the API answered {response.status_code} with no JSON") from exc

    # ------------------------------------------------------------------ calls

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")  # type: ignore[no-any-return]

    def portals(self) -> list[dict[str, Any]]:
        return self.request("GET", "/portals")  # type: ignore[no-any-return]

    def portal(self, portal_id: int) -> dict[str, Any]:
        return self.request("GET", f"/portals/{portal_id}")  # type: ignore[no-any-return]

    def add_portal(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/portals", json=body)  # type: ignore[no-any-return]

    def edit_portal(self, portal_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", f"/portals/{portal_id}",  # type: ignore[no-any-return]
                            json=body)

    def remove_portal(self, portal_id: int) -> None:
        self.request("DELETE", f"/portals/{portal_id}")

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/jobs", json=body)  # type: ignore[no-any-return]

    def jobs(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self.request("GET", "/jobs", params=params)  # type: ignore[no-any-return]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}")  # type: ignore[no-any-return]

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def events(self, job_id: int, *, after_id: int = 0) -> list[dict[str, Any]]:
        return self.request("GET", f"/jobs/{job_id}/events",  # type: ignore[no-any-return]
                            params={"after_id": after_id})

    def manifest(self, job_id: int, *, csv: bool = False) -> Any:
        """The job's manifest as JSON, or (``csv``) as the API's CSV text."""
        try:
            if csv:
                return self.request("GET", f"/jobs/{job_id}/manifest", raw=True,
                                    params={"format": "csv"})
            return self.request("GET", f"/jobs/{job_id}/manifest")
        except ApiError as exc:
            # FastAPI's bare "Not Found" is a route this server lacks (an older API);
            # "job N not found" or "no manifest" come from the route itself.
            if exc.status_code in (404, 405) and str(exc) in ("Not Found",
                                                              "Method Not Allowed"):
                raise ApiError(f"no manifest for job {job_id}: this API does not serve "
                               "manifests (GET /jobs/{id}/manifest); upgrade it",
                               status_code=404) from exc
            raise
