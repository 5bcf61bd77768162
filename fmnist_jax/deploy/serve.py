"""REST API for a trained model (FastAPI), and a uvicorn runner for `python -m fmnist_jax serve`.

POST /predict takes multipart uploads in the field `files` and answers with the same JSON list as
`predict --json`. Bad uploads get a 4xx JSON error, never a 500; the whole request body is capped
before any of it is parsed, so an oversized upload costs a bounded amount of memory and gets a 413.

"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from fmnist_jax import __version__
from fmnist_jax.deploy import predict
from fmnist_jax.photos import decode

MAX_FILES = 16
DEFAULT_MAX_REQUEST_BYTES = 2 * decode.MAX_UPLOAD_BYTES
DRAIN_FACTOR = 4  # read and discard up to this many times the cap so the client sees the 413, then hang up

Message = dict[str, Any]


class BodyLimit:
    """ASGI middleware: buffer request bodies up to `max_bytes`; answer 413 (JSON) for anything larger."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > DRAIN_FACTOR * self.max_bytes):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        received, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            received += len(body)
            more = message.get("more_body", False)
            if received <= self.max_bytes:
                chunks.append(body)
            elif received > DRAIN_FACTOR * self.max_bytes:
                break
        if received > self.max_bytes:
            await self._too_large(send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        body = json.dumps({"detail": f"the request is larger than {self.max_bytes / 2**20:.0f} MB; "
                                     f"send fewer or smaller images"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _description(model: Any) -> str:
    classes = ", ".join(model.class_names)
    return (f"Classifies garment photos into {model.num_classes} classes ({classes}).\n\n"
            "Each photo goes through the same pipeline as in the studio (background removal, crop, inversion, "
            "centring) before the model sees it.\n\n"
            "```\ncurl -F files=@shirt.jpg -F files=@shoe.png http://127.0.0.1:8000/predict\n```")


def documented_api(**options: Any) -> FastAPI:
    """A FastAPI app whose /docs (Swagger UI) and /redoc load their scripts and styles from this server (the
    fastapi-offline package ships them), not from a CDN: the documentation works wherever the API does, offline
    and on a closed network included."""
    return FastAPIOffline(**options)


def create_app(model: Any, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_files: int = MAX_FILES) -> Any:
    """The ASGI app serving `model` (a TrainedModel), with the request-size cap applied around it."""
    api = documented_api(title="Fashion-MNIST Studio API", version=__version__, description=_description(model))
    # Compile the batch-of-one program now, so the first request is as fast as the rest.
    model.predict_proba(np.zeros((1, *model.input_shape), np.uint8))

    @api.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); please report it"}, status_code=500)

    @api.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @api.get("/health", summary="Liveness check")
    def health() -> dict:
        return {"status": "ok", "classes": model.num_classes, "input_shape": list(model.input_shape)}

    @api.get("/model", summary="Classes, input shape, metrics card and preprocessing of the served model")
    def model_info() -> dict:
        card = {k: v for k, v in model.card.items() if k != "config"}
        return {"class_names": list(model.class_names), "input_shape": list(model.input_shape), "card": card,
                "preprocess": model.preprocess, "upload_types": decode.UPLOAD_TYPES,
                "max_upload_bytes": decode.MAX_UPLOAD_BYTES, "max_files": max_files,
                "max_request_bytes": max_request_bytes}

    @api.post("/predict", summary="Classify one or more uploaded images (multipart field `files`)")
    async def predict_endpoint(files: list[UploadFile] = File(..., description="one or more images")) -> JSONResponse:
        return await predict_response(model, files, max_files)

    return BodyLimit(api, max_request_bytes)


async def predict_response(model: Any, files: list[UploadFile], max_files: int = MAX_FILES) -> JSONResponse:
    """The answer to POST /predict: the `predict --json` records (200), or 413/422 with the reason when no
    file is a usable image. Shared by `serve` and the studio's own /api."""
    if len(files) > max_files:
        return JSONResponse({"detail": f"{len(files)} files sent; send at most {max_files} per request"}, status_code=422)
    uploads: list[tuple[str, bytes]] = []
    too_big = []
    for position, upload in enumerate(files):
        payload = await upload.read(decode.MAX_UPLOAD_BYTES + 1)
        name = upload.filename or f"upload-{position + 1}"
        if len(payload) > decode.MAX_UPLOAD_BYTES:
            too_big.append(name)
        uploads.append((name, payload))
    results = [predict.public_record(r) for r in await run_in_threadpool(predict.predict_files, model, uploads)]
    failures = [r for r in results if "error" in r]
    if len(failures) == len(results):
        status = 413 if too_big and len(too_big) == len(results) else 422
        return JSONResponse({"detail": f"no usable image: {failures[0]['file']}: {failures[0]['error']}",
                             "results": results}, status_code=status)
    return JSONResponse(results)


def run(model: Any, host: str = "127.0.0.1", port: int = 8000, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
    """Serve `model` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, max_request_bytes), host=host, port=port, log_level="info")
