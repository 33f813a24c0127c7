"""A small client of a running tower's HTTP API, found through its data directory."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .paths import INFO_NAME, TOKEN_NAME


class ClientError(Exception):
    """The tower is not running, not reachable, or refused the call."""


class TowerClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> "TowerClient":
        info_path = Path(data_dir) / INFO_NAME
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise ClientError(f"no tower is running for {data_dir} (no {info_path}); "
                              f"start one with: hpc-edge tower start --data-dir {data_dir}") from None
        except ValueError as exc:
            raise ClientError(f"{info_path} is damaged: {exc}") from exc
        if not info.get("api"):
            raise ClientError(f"the tower of {data_dir} serves no HTTP API")
        token_path = Path(data_dir) / TOKEN_NAME
        token = token_path.read_text().strip() if token_path.exists() else None
        return cls(info["api"], token)

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
              raw: bool = False):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise ClientError(f"tower refused {method} {path}: {message}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(f"tower at {self.url} is not reachable: {exc}") from exc
        return data if raw else json.loads(data)

    def status(self) -> dict:
        return self._call("GET", "/api/status")

    def jobs(self, state: str | None = None, task: int | None = None, limit: int = 100) -> list[dict]:
        query = {k: v for k, v in {"state": state, "task": task, "limit": limit}.items() if v is not None}
        return self._call("GET", "/api/jobs?" + urllib.parse.urlencode(query))

    def job(self, job_id: int) -> dict:
        return self._call("GET", f"/api/jobs/{job_id}")

    def log(self, job_id: int, stream: str = "stdout") -> bytes:
        return self._call("GET", f"/api/jobs/{job_id}/log/{stream}", raw=True)

    def submit(self, workload_text: str, source: str = "<workload>") -> dict:
        return self._call("POST", "/api/workloads?" + urllib.parse.urlencode({"source": source}),
                          workload_text.encode(), "application/yaml")

    def kill(self, body: dict) -> dict:
        return self._call("POST", "/api/kill", json.dumps(body).encode())

    def retry(self, body: dict) -> dict:
        return self._call("POST", "/api/retry", json.dumps(body).encode())
