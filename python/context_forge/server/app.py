"""The FastAPI application (`create_app`) and the process entry point (`serve`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from context_forge.metrics import CONTENT_TYPE
from context_forge.server import completions, middleware, workflows
from context_forge.server.errors import APIError, install_handlers
from context_forge.server.protocol import ModelCard, ModelList
from context_forge.server.state import ServerState

log = logging.getLogger(__name__)


def _require_api_key(request: Request) -> None:
    """With an api_key configured, every /v1 route needs `Authorization: Bearer <key>`."""
    key = request.app.state.cf.api_key
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")


def create_app(engine: Any, config: Any) -> FastAPI:
    """The HTTP app over a started (or soon started) `Engine`; `serve` and tests both use it."""
    app = FastAPI(title="Context Forge", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    state = ServerState.from_engine(engine, config)
    app.state.cf = state
    install_handlers(app)
    middleware.install(app, config.max_request_bytes)

    @app.get("/health")
    async def health() -> Response:
        if not state.engine_alive():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    if config.enable_metrics:

        @app.get("/metrics")
        async def metrics() -> Response:
            await state.refresh_page_gauges()
            return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(_require_api_key)])
    async def models() -> Response:
        cards = [ModelCard(id=name, max_model_len=engine.context_len) for name in state.model_names]
        return JSONResponse(ModelList(data=cards).model_dump())

    app.include_router(completions.router, dependencies=[Depends(_require_api_key)])
    app.include_router(workflows.router, dependencies=[Depends(_require_api_key)])
    return app


class _Server(uvicorn.Server):
    """uvicorn's server: logs the URL once the socket listens, stops the engine when it shuts down.

    uvicorn re-raises a captured SIGTERM after its graceful shutdown, which ends the process at once,
    so the engine must be stopped inside `shutdown`, not after `run` returns.
    """

    def __init__(self, config: uvicorn.Config, url: str, on_stop: Callable[[], None]):
        super().__init__(config)
        self._url = url
        self._on_stop = on_stop

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("Context Forge ready at %s (OpenAI API under %s/v1)", self._url, self._url)

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets)
        self._on_stop()


def serve(config: Any) -> None:
    """Builds and starts the engine, serves HTTP on `config.host:config.port` until SIGINT/SIGTERM,
    then shuts the engine down. A SIGINT surfaces as `KeyboardInterrupt` after the clean shutdown."""
    from context_forge.engine.engine import Engine

    engine = Engine(config)
    stopped = False

    def stop_engine() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            engine.shutdown()
            log.info("Context Forge stopped")

    engine.start()
    try:
        app = create_app(engine, config)
        host, port = config.host, config.port
        uv_config = uvicorn.Config(
            app, host=host, port=port, log_level=_uvicorn_level(config), lifespan="off",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        )
        shown_host = f"[{host}]" if ":" in host else host
        _Server(uv_config, f"http://{shown_host}:{port}", stop_engine).run()
    finally:
        stop_engine()


_GRACEFUL_SHUTDOWN_S = 5
"""Seconds open requests (streams included) get to finish after SIGINT/SIGTERM."""


def _uvicorn_level(config: Any) -> str:
    return str(config.log_level).lower()
