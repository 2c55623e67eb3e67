"""The HTTP API over an exported bundle: ``/api/predict``, ``/api/predict_batch``, ``/health``.

``python -m src serve --config configs/X.yaml`` loads the bundle ``serve.bundle`` (default: what
``export`` wrote, ``<outputs>/bundle[-variant]``), checks it (see ``bundle.py``) and serves it with
uvicorn on ``serve.host:serve.port``. It reads nothing else from ``outputs/``.

``POST /api/predict``: multipart form with files ``audio_1`` and ``audio_2`` (any format
soundfile reads; mixed to mono, resampled to the bundle's rate). Answers::

    {"label": 0 | 1, "probability": float, "threshold": float,
     "scores": {"<run>": {"asnorm": float, "cosine": float}, ...}, "warnings": [str, ...]}

``probability`` is the bundle's stacker's (the fold mean of its fold stackers, as the pipeline
computes it for a test pair); ``label`` is 1 (same speaker) at or above ``threshold``. A clip the
pipeline would not score is refused with a 422 that names it and says why, by ``prepare``'s own
rule and thresholds (:func:`src.data.audio.unusable_reason`): silent (RMS below
``data.silence_dbfs``, with its RMS and peak) or too short (under
``data.min_scored_seconds`` of audio, 0.1 s by default; under ``data.min_duration`` the upload
does not decode: 400). A usable clip outside the model's range is still
scored, with a warning that names it and says why (``src/data/checks.py``: shorter than
``data.short_clip_seconds``, scored best-effort; recorded below 16 kHz, less speech than the
model's window, clipped, near-silent with the reason, a channel left out of the downmix). A
bad upload gets a 4xx with ``{"detail": reason}`` (see :mod:`src.serve.uploads`; a missing field
is FastAPI's 422) and the server keeps serving.

``POST /api/predict_batch``: files ``files`` (several; each known by its file name) and a form
field ``pairs``: CSV text with a header ``audio_1,audio_2`` or a JSON list of name pairs. Each
clip is embedded once however many pairs name it. A file that cannot be decoded, or that
``/api/predict`` would refuse with a 422 (silent, too short), costs the pairs that name it (no
label; their ``error`` says why), not the batch; ``refused`` counts those pairs. Warnings about a
clip are in the batch's ``warnings`` and in the ``warnings`` of every pair that names it. A batch
with at least ``serve.graph_min_share`` of the test clips the bundle's graph stacker was fitted
with is one trial graph (its usable clips beside each fold's held-out clips) and gets the graph
stacker, the submission's answers; a smaller one the stacker without graph features
(``stacker`` says which, per batch and per pair; the form field ``stacker`` insists on one).

Model work (decoding included) runs on one worker thread, off the event loop, so ``/health``
answers while the model is busy; at most ``serve.max_pending`` requests wait for it, more get 503.

Example
-------
>>> curl -F audio_1=@a.wav -F audio_2=@b.flac http://127.0.0.1:8000/api/predict  # doctest: +SKIP
{"label":1,"probability":0.93,"threshold":0.47,"scores":{...},"warnings":[]}
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import pandas as pd
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from src.config import ChecksConfig, ExperimentConfig, ServeConfig
from src.data.audio import unusable_reason
from src.data.checks import recording_warnings, short_clip_note
from src.data.pairs import DataLayoutError, clean_name, pair_list_from_rows, pair_list_from_text

from .bundle import BundleError
from .ensemble import BundleModel, Clip
from .uploads import UploadError, decode_upload

log = logging.getLogger(__name__)

MULTIPART_SLACK_BYTES = 1 << 20  # form boundaries, headers and the pair list around the files
STACKERS = ("auto", "graph", "pairwise")  # predict_batch's ``stacker`` field
PAIR_LINE_BYTES = 256  # room per pair in the ``pairs`` text field (two file names, a comma)


class Prediction(BaseModel):
    label: int
    probability: float
    threshold: float
    scores: dict[str, dict[str, float]]
    warnings: list[str] = []


class PairPrediction(BaseModel):
    audio_1: str
    audio_2: str
    label: int | None = None
    probability: float | None = None
    stacker: str | None = None  # "graph" (the submission's) or "pairwise"; None: not answered
    scores: dict[str, dict[str, float]] = {}
    error: str | None = None
    warnings: list[str] = []  # about either clip of this pair


class BatchPrediction(BaseModel):
    threshold: float  # of the stacker that answered (graph: the submission's own threshold)
    stacker: str  # "graph": the trial graph of the batch's clips; "pairwise": no graph features
    stacker_reason: str
    graph_clips: int  # usable clips of the batch: its trial graph's test clips
    results: list[PairPrediction]
    refused: int = 0  # pairs with no label: a clip that cannot be decoded or scored (``error``)
    warnings: list[str] = []


class Health(BaseModel):
    status: str
    bundle: str
    created: str
    runs: list[str]
    folds: int
    runtime: str
    threshold: float
    threshold_source: str
    oof_eer: float | None
    graph_stacker: bool  # whether large batches get the submission's graph stacker
    pending: int
    warnings: list[str]


class ModelQueue:
    """One worker thread for model work, and a bound on the requests waiting for it."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0  # changed on the event loop only
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.pending >= self.max_pending:
            raise HTTPException(
                503, detail=f"busy: {self.pending} requests are waiting for the model; retry"
            )
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, functools.partial(function, *args))
        finally:
            self.pending -= 1


class BundleService:
    """What the routes do with a bundle: decode uploads, score a pair or a batch (on the model
    queue's thread), and describe the bundle for ``/health``.

    Parameters
    ----------
    model : BundleModel
        The loaded bundle.
    serve : ServeConfig
        Upload limits (MB per file, seconds per clip, files and pairs per batch) and queue size.
    checks : ChecksConfig
        When a clip gets a warning (``src/data/checks.py``).
    """

    def __init__(
        self,
        model: BundleModel,
        serve: ServeConfig,
        checks: ChecksConfig,
        stacker: str = "auto",
    ) -> None:
        self.model, self.serve, self.checks, self.stacker = model, serve, checks, stacker
        self.max_file_bytes = int(serve.max_upload_mb * 2**20)
        self.data = model.stack_cfg.data
        # a clip the pipeline would truncate is refused instead: the answer would differ
        self.max_seconds = min(serve.max_seconds, self.data.max_duration)
        self.window = max(run.cfg.embed.window_seconds for run in model.runs)
        self.queue = ModelQueue(serve.max_pending)

    def decode(self, field: str, payload: bytes) -> tuple[Clip, list[str]]:
        """One upload as a clip, and its warnings.

        Raises UploadError naming ``field``: the upload's own 4xx (:mod:`src.serve.uploads`), or
        422 for a clip that decodes but must not be scored (silent, or too short to score: the
        rule and ``data.*`` thresholds with which ``prepare`` sends a test file to the fallback,
        :func:`src.data.audio.unusable_reason`).
        """
        data = self.data
        try:
            upload = decode_upload(
                payload, self.model.sample_rate, self.max_seconds, data.min_duration,
                self.max_file_bytes, data.downmix_silent_db, data.downmix_cancel_db,
            )  # fmt: skip
        except UploadError as err:
            raise UploadError(err.status, f"{field}: {err}") from None
        facts = upload.facts()
        # prepare's rule for a test file it would not score (its pairs get the fallback answer)
        unusable = unusable_reason(upload.clip, data.silence_dbfs, data.min_scored_seconds)
        if unusable is not None:
            raise UploadError(422, f"{field}: not scored: {unusable}")
        said = recording_warnings(facts, self.checks, self.window, data.silence_dbfs)
        short = short_clip_note(upload.clip.duration, data.short_clip_seconds)
        said = [short, *said] if short is not None else said
        return Clip(upload.samples, facts), [f"{field}: {line}" for line in said]

    def score_pair(self, uploads: dict[str, bytes]) -> Prediction:
        """The answer for ``audio_1`` and ``audio_2`` (run on the model thread)."""
        started = time.perf_counter()
        clips, warnings = {}, []
        for field, payload in uploads.items():
            clips[field], said = self.decode(field, payload)
            warnings += said
        row = self.model.answer_pair(clips["audio_1"], clips["audio_2"])
        log.debug("scored a pair in %.3f s", time.perf_counter() - started)
        return Prediction(
            label=int(row["label"]),
            probability=float(row["probability"]),
            threshold=self.model.threshold,
            scores=run_scores(self.model, row),
            warnings=warnings,
        )

    def score_batch(
        self, uploads: dict[str, bytes], pairs: pd.DataFrame, stacker: str | None = None
    ) -> BatchPrediction:
        """The answers for ``pairs`` of uploads; a clip that fails to decode, or must not be
        scored (silent, too short), fails its pairs: no label, the reason in ``error``.
        ``stacker``: ``auto`` (default: the service's), ``graph`` or ``pairwise`` (see
        :meth:`BundleModel.stacker_for`)."""
        clips, warnings, errors, by_file = {}, [], {}, {}
        for name, payload in uploads.items():
            try:
                clips[name], by_file[name] = self.decode(name, payload)
                warnings += by_file[name]
            except UploadError as err:
                errors[name] = str(err)
        bad = pairs["audio_1"].isin(errors) | pairs["audio_2"].isin(errors)
        asked = stacker or self.stacker
        stacker = self.model.stacker_for(len(clips), self.serve.graph_min_share, asked)
        reason = stacker_reason(self.model, stacker, len(clips), self.serve.graph_min_share)
        answered = (
            self.model.answer(clips, pairs[~bad], stacker) if (~bad).any() else pairs.iloc[:0]
        )
        results, rows = [], iter(answered.to_dict("records"))
        for a, b, failed in zip(pairs["audio_1"], pairs["audio_2"], bad, strict=True):
            if failed:
                error = "; ".join(errors[n] for n in dict.fromkeys((a, b)) if n in errors)
                results.append(PairPrediction(audio_1=a, audio_2=b, error=error))
                continue
            row = next(rows)
            results.append(
                PairPrediction(
                    audio_1=a,
                    audio_2=b,
                    label=int(row["label"]),
                    probability=float(row["probability"]),
                    stacker=stacker,
                    scores=run_scores(self.model, row),
                    warnings=[w for n in dict.fromkeys((a, b)) for w in by_file[n]],
                )
            )
        graph = self.model.graph
        return BatchPrediction(
            threshold=graph.threshold if stacker == "graph" and graph else self.model.threshold,
            stacker=stacker,
            stacker_reason=reason,
            graph_clips=len(clips),
            results=results,
            refused=int(bad.sum()),
            warnings=warnings,
        )

    def health(self) -> Health:
        """The bundle's identity, threshold, OOF EER, warnings and the requests waiting."""
        model = self.model
        manifest = model.manifest
        oof = (manifest.get("oof") or {}).get("bundle_stacker") or {}
        return Health(
            status="ok",
            bundle=str(model.root),
            created=str(manifest.get("created")),
            runs=[r.name for r in model.runs],
            folds=max(len(r.folds) for r in model.runs),
            runtime=model.runtime,
            threshold=model.threshold,
            threshold_source=str(manifest["threshold"]["source"]),
            oof_eer=oof.get("eer"),
            graph_stacker=model.graph is not None,
            pending=self.queue.pending,
            warnings=model.warnings,
        )

    async def predict(self, uploads: dict[str, bytes]) -> Prediction:
        """``/api/predict``: a bad upload is its 4xx, a clip or pair that must not or cannot be
        scored a 422."""
        try:
            return await self.queue.run(self.score_pair, uploads)
        except UploadError as err:
            log.info("rejected upload (%d): %s", err.status, err)
            raise HTTPException(err.status, detail=str(err)) from None
        except ValueError as err:  # the model could not score a decodable pair
            log.warning("could not score a pair: %s", err)
            raise HTTPException(422, detail=str(err)) from None

    async def predict_batch(
        self, files: list[UploadFile], pairs: str, stacker: str = "auto"
    ) -> BatchPrediction:
        """``/api/predict_batch``: 413 for too many files or pairs, 400 for a bad pair list or
        an unknown ``stacker``, 422 for ``stacker=graph`` on a bundle without one."""
        if stacker not in STACKERS:
            raise HTTPException(400, detail=f"stacker: {stacker!r} is not one of {STACKERS}")
        if stacker == "graph" and self.model.graph is None:
            raise HTTPException(
                422,
                detail="stacker=graph: this bundle has no graph stacker (stack.graph_features off)",
            )
        if len(files) > self.serve.max_batch_files:
            raise HTTPException(
                413, detail=f"too many files: {len(files)} > {self.serve.max_batch_files}"
            )
        uploads: dict[str, bytes] = {}
        sent: dict[str, str] = {}
        for upload in files:
            uploads[upload_name(upload.filename, sent)] = await upload.read()
        table = parse_pairs(pairs, set(uploads), self.serve.max_batch_pairs)
        try:
            return await self.queue.run(self.score_batch, uploads, table, stacker)
        except ValueError as err:
            log.warning("could not score a batch: %s", err)
            raise HTTPException(422, detail=str(err)) from None


def create_app(
    model: BundleModel, serve: ServeConfig, checks: ChecksConfig | None = None
) -> FastAPI:
    """A FastAPI app serving ``model`` with the limits of ``serve``; ``checks`` (default: the
    bundle's) sets when a clip gets a warning (``src/data/checks.py``)."""
    service = BundleService(model, serve, checks if checks is not None else model.stack_cfg.checks)
    pair_body = 2 * service.max_file_bytes + MULTIPART_SLACK_BYTES
    batch_body = (
        min(serve.max_batch_files * service.max_file_bytes, int(serve.max_batch_mb * 2**20))
        + MULTIPART_SLACK_BYTES
    )
    too_large = (
        f"request too large: each file may be at most {serve.max_upload_mb:g} MB, a batch "
        f"{serve.max_batch_mb:g} MB in all (serve.max_upload_mb, serve.max_batch_mb)"
    )
    app = FastAPI(
        title="Speaker verification",
        description="Do two utterances come from the same speaker?",
        version="2.0",
    )
    limits = {"/api/predict": pair_body, "/api/predict_batch": batch_body}
    app.add_middleware(ContentLengthLimit, limits=limits, detail=too_large)
    app.add_exception_handler(StarletteHTTPException, http_error_handler(too_large))

    @app.get("/health")
    async def health() -> Health:
        return service.health()

    @app.post(
        "/api/predict",
        max_body_size=pair_body,  # counts streamed bodies without a Content-Length
        responses={400: {}, 413: {}, 415: {}, 503: {}},
    )
    async def predict(
        audio_1: Annotated[UploadFile, File(description="first utterance")],
        audio_2: Annotated[UploadFile, File(description="second utterance")],
    ) -> Prediction:
        return await service.predict(
            {"audio_1": await audio_1.read(), "audio_2": await audio_2.read()}
        )

    @app.post(
        "/api/predict_batch",
        max_body_size=batch_body,
        # a Zalo-size test in one request: the form parser's defaults (1,000 files, 1 MB text
        # fields) would refuse its 2,800 clips and 50,000-pair list; ours are checked after
        form_limits={
            "max_files": serve.max_batch_files + 1,
            "max_part_size": max(1 << 20, PAIR_LINE_BYTES * serve.max_batch_pairs),
        },
        responses={400: {}, 413: {}, 503: {}},
    )
    async def predict_batch(
        files: Annotated[list[UploadFile], File(description="clips, known by file name")],
        pairs: Annotated[str, Form(description="CSV audio_1,audio_2 or JSON [[a, b], ...]")],
        stacker: Annotated[
            str, Form(description="auto (graph stacker for a large enough batch), graph, pairwise")
        ] = "auto",
    ) -> BatchPrediction:
        return await service.predict_batch(files, pairs, stacker)

    return app


def http_error_handler(
    too_large: str,
) -> Callable[[Request, StarletteHTTPException], Awaitable[JSONResponse]]:
    """Every HTTP error as ``{"detail": reason}``; a streamed body too large says the limit."""

    async def explain_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 413 and detail == "Content Too Large":  # a streamed body too large
            detail = too_large
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    return explain_http_error


def stacker_reason(model: BundleModel, stacker: str, clips: int, min_share: float) -> str:
    """Why ``stacker`` answers a batch of ``clips`` usable clips (for the response)."""
    graph = model.graph
    if graph is None:
        return "the bundle has no graph stacker (stack.graph_features off)"
    fitted = int(graph.decision["test_clips"])
    if stacker == "graph":
        return (
            f"{clips} usable clips form the trial graph (the graph stacker was fitted with "
            f"{fitted} test clips; serve.graph_min_share {min_share:g})"
        )
    return (
        f"{clips} usable clips < {min_share:g} x the {fitted} test clips the graph stacker was "
        "fitted with (serve.graph_min_share): the stacker without graph features answers"
    )


def run_scores(model: BundleModel, row: Any) -> dict[str, dict[str, float]]:
    """Each run's fold-mean first-level scores of an answered pair."""
    return {
        run.name: {s: float(row[f"{run.name}__{s}"]) for s in ("asnorm", "cosine")}
        for run in model.runs
    }


def parse_pairs(text: str, names: set[str], max_pairs: int) -> pd.DataFrame:
    """The ``pairs`` field of a batch: CSV with ``audio_1,audio_2`` or a JSON list of pairs,
    read by the pipeline's pair-list reader (:mod:`src.data.pairs`: spaces, BOM, CRLF and
    Unicode forms tolerated as ``prepare`` tolerates them); ``names`` are the cleaned upload
    names.

    Raises a 400 HTTPException for unreadable text, a pair naming a file not sent, or none.
    """
    try:
        if text.lstrip("\ufeff \t\r\n").startswith("["):
            rows = json.loads(text.lstrip("\ufeff"))
            if not isinstance(rows, list):
                raise DataLayoutError("pairs: a JSON pair list must be a list")
            table = pair_list_from_rows(rows, "pairs").pairs
        else:
            table = pair_list_from_text(text, "pairs", log_rows=False).pairs
    except json.JSONDecodeError as err:
        raise HTTPException(400, detail=f"pairs: not a CSV or JSON pair list ({err})") from None
    except DataLayoutError as err:
        raise HTTPException(400, detail=str(err)) from None
    if len(table) > max_pairs:
        raise HTTPException(413, detail=f"pairs: {len(table)} > {max_pairs} in one request")
    unknown = sorted((set(table["audio_1"]) | set(table["audio_2"])) - names)
    if unknown:
        raise HTTPException(400, detail=f"pairs name files that were not sent: {unknown[:5]}")
    return table.reset_index(drop=True)


def upload_name(filename: str | None, taken: dict[str, str]) -> str:
    """An uploaded file's name as pairs refer to it (:func:`src.data.pairs.clean_name`);
    ``taken`` maps the names already used to the names as sent. Raises a 400 HTTPException
    for a missing name, or one that another upload already has once normalised."""
    name = clean_name(filename or "")
    if not name:
        raise HTTPException(400, detail=f"file names must be unique and given: {filename!r}")
    if name in taken:
        raise HTTPException(
            400,
            detail=f"file names must be unique: {taken[name]!r} and {filename!r} are the same "
            f"name {name!r} once normalised (Unicode NFC, surrounding spaces removed)",
        )
    taken[name] = str(filename)
    return name


class ContentLengthLimit:
    """Answer 413 with a JSON reason, before reading the body, when Content-Length is larger
    than the limit of the request's path."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], detail: str) -> None:
        self.app, self.limits, self.detail = app, limits, detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.limits.get(scope.get("path", ""), max(self.limits.values()))
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > limit:
                response = JSONResponse({"detail": self.detail}, status_code=413)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def serve_stage(cfg: ExperimentConfig) -> None:
    """CLI entry: load the bundle ``serve.bundle`` (default: ``export``'s), then serve it."""
    root = cfg.served_bundle
    if cfg.serve.runtime == "onnx" and cfg.serve.bundle is None and not root.is_dir():
        raise BundleError(
            f"no ONNX bundle at {root}: export one first (python -m src export --config ... "
            "export.onnx=true; it has its own folder, so a plain export never replaces it)"
        )
    model = BundleModel.load(root, cfg.serve.runtime)
    app = create_app(model, cfg.serve, cfg.checks)
    host, port = cfg.serve.host, cfg.serve.port
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving %s at http://%s:%d (POST /api/predict, /api/predict_batch; GET /health)",
        model.root,
        shown,
        port,
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
