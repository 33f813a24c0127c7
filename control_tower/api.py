"""The tower's HTTP JSON API (localhost by default). Mutating calls need the data directory's token.

    GET  /api/status                       counts by task and state, workers by state, rejected messages
    GET  /api/jobs?state=S&task=T&limit=N  jobs
    GET  /api/jobs/{id}                    one job, its attempts and its events
    GET  /api/jobs/{id}/log/{stdout|stderr}?tail=BYTES
    GET  /api/workers?live=1&limit=N       workers (live ones only; the latest N submitted)
    GET  /metrics                          Prometheus metrics (jobs by task and state, workers, messages ...)
    GET  /                                 the web page: jobs by task, workers, failed jobs (refreshed every 2 s)
    POST /api/workloads   (YAML body)      submit a workload           [token]
    POST /api/kill        {"jobs": [...]} | {"task": id} | {"worker": id}  [token]
    POST /api/retry       {"jobs": [...]} | {"task": id, "states": ["failed"]}  [token]
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

from aiohttp import web

from hpc_edge.payload import STDERR_NAME, STDOUT_NAME

from .service import ServiceError
from .store import StoreWriteError
from .workload import WorkloadError, parse_workload

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
WEB_PAGE = Path(__file__).with_name("web") / "index.html"


class ApiHandle:
    def __init__(self, runner: web.AppRunner, url: str):
        self.runner, self.url = runner, url

    async def close(self) -> None:
        await self.runner.cleanup()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(service) -> web.Application:
    tower, store = service.tower, service.store

    @web.middleware
    async def store_guard(request, handler):
        """A store that cannot be written stops the tower (Service.serve): calls get 503 and why."""
        if store.failed is not None:
            return _error(503, str(store.failed))
        try:
            with store.writable():
                return await handler(request)
        except StoreWriteError as exc:
            logger.error("an API call: %s", exc)
            return _error(503, str(exc))

    app = web.Application(client_max_size=MAX_BODY, middlewares=[store_guard])

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), service.token.encode())

    async def status(_request):
        return web.json_response({**tower.status(), "worker_states": store.worker_states()})

    async def page(_request):
        return web.FileResponse(WEB_PAGE, headers={"Cache-Control": "no-cache"})

    registry = []  # made at the first scrape: prometheus_client takes 40 ms to import, and most runs have none

    async def metrics(_request):
        from .metrics import CONTENT_TYPE, exposition, registry_for

        if not registry:
            registry.append(registry_for(service))
        return web.Response(body=exposition(registry[0]), headers={"Content-Type": CONTENT_TYPE})

    async def jobs(request):
        try:
            limit = min(int(request.query.get("limit", 1000)), 100_000)
            offset = int(request.query.get("offset", 0))
            task = int(request.query["task"]) if "task" in request.query else None
        except ValueError:
            return _error(400, "limit, offset and task must be integers")
        return web.json_response(store.jobs(request.query.get("state"), task, limit, offset))

    def _job_id(request) -> int | None:
        try:
            return int(request.match_info["job_id"])
        except ValueError:
            return None

    async def job(request):
        job_id = _job_id(request)
        row = store.job(job_id) if job_id is not None else None
        if row is None:
            return _error(404, f"no job {request.match_info['job_id']}")
        row["attempts"] = store.attempts(job_id)
        row["events"] = store.events(job_id)
        return web.json_response(row)

    async def job_log(request):
        job_id = _job_id(request)
        row = store.job(job_id) if job_id is not None else None
        if row is None:
            return _error(404, f"no job {request.match_info['job_id']}")
        stream = request.match_info["stream"]
        if stream not in ("stdout", "stderr"):
            return _error(400, "log stream must be stdout or stderr")
        if not row["workdir"]:
            return _error(404, f"job {job_id} has not run yet")
        path = Path(row["workdir"]) / (STDOUT_NAME if stream == "stdout" else STDERR_NAME)
        try:
            tail = int(request.query.get("tail", 1 << 20))
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - tail))
                data = f.read()
        except ValueError:
            return _error(400, "tail must be an integer")
        except FileNotFoundError:
            if row["state"] == "finished":  # run on --scratch, which brings back no empty log
                return web.Response(body=b"", content_type="text/plain")
            return _error(404, f"job {job_id} has no {stream} file yet ({path})")
        except OSError as exc:
            return _error(404, f"job {job_id}: cannot read its {stream} file: {exc}")
        return web.Response(body=data, content_type="text/plain")

    async def workers(request):
        try:
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError:
            limit = 0
        if limit is not None and limit < 1:
            return _error(400, f"limit must be a positive integer, not {request.query['limit']!r}")
        # the latest submitted, with a limit
        return web.json_response(store.workers(live_only=request.query.get("live") == "1", limit=limit))

    async def submit(request):
        if not authorized(request):
            return _error(401, "a valid token is needed (Authorization: Bearer <data dir's api.token>)")
        text = await request.text()
        try:
            workload = parse_workload(text, request.query.get("source", "<submitted workload>"))
            ids = service.add_workload(workload)
        except (WorkloadError, ServiceError) as exc:
            return _error(400, str(exc))
        return web.json_response({"tasks": ids})

    async def json_object(request) -> dict:
        body = json.loads(await request.text())
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    def selected_jobs(body: dict, states: list | None = None) -> list[int]:
        """The job ids a body names: {"jobs": [...]} or {"task": id} (in the given states)."""
        if "task" in body:
            task = int(body["task"])
            return [j["job_id"] for s in (states or [None]) for j in store.jobs(s, task, limit=100_000_000)]
        return [int(j) for j in body.get("jobs", [])]

    async def kill(request):
        if not authorized(request):
            return _error(401, "a valid token is needed")
        try:
            body = await json_object(request)
            if "worker" in body:
                ok = await service.cancel_worker(str(body["worker"]))
                return web.json_response({"worker": body["worker"], "cancelled": ok})
            ids = selected_jobs(body)
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad body: {exc}")
        result = tower.kill_jobs(ids)
        tower.flush()
        return web.json_response(result)

    async def retry(request):
        if not authorized(request):
            return _error(401, "a valid token is needed")
        try:
            body = await json_object(request)
            ids = selected_jobs(body, body.get("states") or ["failed", "cancelled"])
        except (ValueError, TypeError) as exc:
            return _error(400, f"bad body: {exc}")
        result = tower.retry_jobs(sorted(ids))
        tower.flush()
        if result["retried"]:
            service.work_arrived = True
        return web.json_response(result)

    app.add_routes([
        web.get("/api/status", status), web.get("/api/jobs", jobs), web.get("/api/jobs/{job_id}", job),
        web.get("/api/jobs/{job_id}/log/{stream}", job_log), web.get("/api/workers", workers),
        web.post("/api/workloads", submit), web.post("/api/kill", kill), web.post("/api/retry", retry),
        web.get("/metrics", metrics), web.get("/", page),
    ])
    return app


async def start_api(service, bind: str) -> ApiHandle:
    host, _, port = bind.rpartition(":")
    runner = web.AppRunner(build_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port or 0))
    await site.start()
    sockets = site._server.sockets  # the bound port when 0 was asked
    real_port = sockets[0].getsockname()[1]
    url = f"http://{host or '127.0.0.1'}:{real_port}"
    logger.info("API on %s", url)
    return ApiHandle(runner, url)
