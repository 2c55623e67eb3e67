"""The HTTP API: ``POST /api/predict`` (two audio files -> label and score), ``GET /health``.

``python -m src serve --config configs/X.yaml`` loads the experiment's fold ensemble once
(:class:`~src.serve.model.VerificationModel`) and serves it with uvicorn on
``serve.host:serve.port``.

``POST /api/predict``: multipart form with files ``audio_1`` and ``audio_2`` (any format
soundfile reads; mixed to mono, resampled to ``data.sample_rate``). Answers
``{"label": 0 | 1, "score": float, "warnings": [str, ...]}``: ``score`` is the fold-mean AS-norm
score, ``label`` is 1 (same speaker) when it reaches the model's threshold. A silent or
near-silent clip (RMS below ``data.silence_dbfs``) is still scored, with a warning, as the
pipeline scores silent test files. A bad upload gets a 4xx with ``{"detail": reason}`` (see
:mod:`src.serve.uploads`; a missing field is FastAPI's 422) and the server keeps serving.

Decoding and inference run in worker threads, so the event loop keeps answering other
requests (``/health`` included) while a pair is scored; the model scores one pair at a time.

Example
-------
>>> curl -F audio_1=@a.wav -F audio_2=@b.flac http://127.0.0.1:8000/api/predict  # doctest: +SKIP
{"label":1,"score":3.41,"warnings":[]}
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from src.config import ExperimentConfig
from src.serve.model import VerificationModel
from src.serve.uploads import UploadError, decode_upload

log = logging.getLogger(__name__)

MULTIPART_SLACK_BYTES = 1 << 20  # form boundaries and headers around the two files


class Prediction(BaseModel):
    label: int
    score: float
    warnings: list[str] = []


class Health(BaseModel):
    status: str
    experiment: str
    folds: int
    threshold: float
    threshold_source: str


def create_app(model: VerificationModel, cfg: ExperimentConfig) -> FastAPI:
    """A FastAPI app serving ``model`` with the upload limits of ``cfg.serve``."""
    max_file_bytes = int(cfg.serve.max_upload_mb * 2**20)
    max_body_bytes = 2 * max_file_bytes + MULTIPART_SLACK_BYTES
    app = FastAPI(
        title="Speaker verification",
        description="Do two utterances come from the same speaker?",
        version="1.0",
    )

    too_large = f"request too large: each file may be at most {cfg.serve.max_upload_mb:g} MB"
    app.add_middleware(ContentLengthLimit, max_bytes=max_body_bytes, detail=too_large)

    @app.exception_handler(StarletteHTTPException)
    async def explain_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 413 and detail == "Content Too Large":  # a streamed body too large
            detail = too_large
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health")
    async def health() -> Health:
        return Health(
            status="ok",
            experiment=model.experiment,
            folds=len(model.folds),
            threshold=model.threshold.value,
            threshold_source=model.threshold.source,
        )

    @app.post(
        "/api/predict",
        max_body_size=max_body_bytes,  # counts streamed bodies without a Content-Length
        responses={400: {}, 413: {}, 415: {}},
    )
    async def predict(
        audio_1: Annotated[UploadFile, File(description="first utterance")],
        audio_2: Annotated[UploadFile, File(description="second utterance")],
    ) -> Prediction:
        uploads = {"audio_1": await audio_1.read(), "audio_2": await audio_2.read()}
        try:
            return await run_in_threadpool(score_uploads, model, cfg, uploads, max_file_bytes)
        except UploadError as err:
            log.info("rejected upload (%d): %s", err.status, err)
            raise HTTPException(err.status, detail=str(err)) from None
        except ValueError as err:  # the model could not score a decodable pair
            log.warning("could not score a pair: %s", err)
            raise HTTPException(422, detail=str(err)) from None

    return app


class ContentLengthLimit:
    """Answer 413 with a JSON reason, before reading the body, when Content-Length is too large."""

    def __init__(self, app: ASGIApp, max_bytes: int, detail: str) -> None:
        self.app, self.max_bytes, self.detail = app, max_bytes, detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                response = JSONResponse({"detail": self.detail}, status_code=413)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def score_uploads(
    model: VerificationModel, cfg: ExperimentConfig, uploads: dict[str, bytes], max_bytes: int
) -> Prediction:
    """Decode both uploads and score them (runs in a worker thread)."""
    started = time.perf_counter()
    waves, warnings = [], []
    for field, data in uploads.items():
        try:
            clip = decode_upload(
                data, cfg.data.sample_rate, cfg.serve.max_seconds, cfg.data.min_duration, max_bytes
            )
        except UploadError as err:
            raise UploadError(err.status, f"{field}: {err}") from None
        if clip.rms_dbfs < cfg.data.silence_dbfs:
            warnings.append(
                f"{field} is silent or nearly (RMS {clip.rms_dbfs:.1f} dBFS < "
                f"{cfg.data.silence_dbfs:g} dBFS): the score is unreliable"
            )
        waves.append(clip.samples)
    label, score = model.predict(waves[0], waves[1])
    log.debug("scored a pair in %.3f s: %.4f -> %d", time.perf_counter() - started, score, label)
    return Prediction(label=label, score=score, warnings=warnings)


def serve_stage(cfg: ExperimentConfig) -> None:
    """CLI entry: load the ensemble, then serve it until interrupted."""
    model = VerificationModel.load(cfg)
    app = create_app(model, cfg)
    host, port = cfg.serve.host, cfg.serve.port
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving %s at http://%s:%d (POST /api/predict, GET /health)", model.experiment, shown, port
    )
    # log_config=None: uvicorn's records go through our timestamped root handler
    uvicorn.run(app, host=host, port=port, log_config=None, log_level="info")


class BackgroundServer:
    """A uvicorn server in a daemon thread on a free loopback port (tests, benchmarks).

    Example
    -------
    >>> with BackgroundServer(app) as server:  # doctest: +SKIP
    ...     httpx.get(f"{server.url}/health").json()["status"]
    'ok'
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", start_timeout: float = 30.0) -> None:
        self.app, self.host, self.start_timeout = app, host, start_timeout
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then (with
        # proto 0 every small response waits ~40 ms for a delayed ACK)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))  # the OS picks a free port
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, log_config=None, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the test server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
