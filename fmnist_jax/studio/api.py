"""The studio's own REST API: served beside the pages, on the same port, under /api (app.py mounts it with
st.App routes), with the same requests and answers as `python -m fmnist_jax serve`.

    GET  /api/health                  liveness
    GET  /api/model[?share=TOKEN]     classes, input shape, metrics card and preprocessing of the model
    POST /api/predict[?share=TOKEN]   multipart field `files`: the `predict --json` records
    GET  /api/docs                    interactive documentation

Locally the shipped demo model answers without a token, and a share token (the Deploy page's predict-only
links; also accepted as the X-Share-Token header) picks a shared model. On a public Space a token is required
and predictions are rate-limited per client address.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fastapi import File, Header, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from fmnist_jax import __version__, settings, store
from fmnist_jax.deploy import predict, serve
from fmnist_jax.photos import decode
from fmnist_jax.studio import public, shares

PREDICTIONS_PER_MINUTE = 60  # per client address, public mode (images, not requests)
MODELS_KEPT = 4
_MODELS: OrderedDict[tuple[str, str], Any] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def _model(source: str) -> Any:
    """A loaded model, kept for the next request (the few most recently used); reloaded when its weights change."""
    key = (source, store.weights_stamp(source))
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    model = predict.load_model(source)
    with _MODELS_LOCK:
        _MODELS[key] = model
        while len(_MODELS) > MODELS_KEPT:
            _MODELS.popitem(last=False)
    return model


def _source(token: str | None) -> str:
    """The model folder (or "demo") a request may use; HTTPException (401/404) otherwise."""
    if token:
        share = shares.resolve_share(token)
        if share is None:
            raise HTTPException(404, "unknown or revoked share token")
        return share["source"]
    if settings.public_mode():
        raise HTTPException(401, "this public Space answers with a shared model: pass the token of a share link "
                                 "(the Deploy page's 'Create a predict-only link') as ?share=TOKEN")
    return shares.DEMO


def client_address(request: Request) -> str:
    """Who is asking, for the rate limit. Behind a Space's proxy every request comes from the proxy, which
    appends the visitor's address to X-Forwarded-For; the last entry is the one the proxy saw (earlier ones
    are whatever the client sent, so they are not trusted)."""
    forwarded = request.headers.get("x-forwarded-for", "")
    last = forwarded.split(",")[-1].strip()
    return last or (request.client.host if request.client else "unknown")


def create_api(max_request_bytes: int = serve.DEFAULT_MAX_REQUEST_BYTES,
               limiter: public.RateLimiter | None = None) -> Any:
    """The ASGI app to mount at /api, with the request-size cap around it."""
    limiter = limiter or public.RateLimiter(PREDICTIONS_PER_MINUTE)
    api = serve.documented_api(title="Fashion-MNIST Studio API", version=__version__,
                  description="Classify garment photos with the studio's demo model or a shared model. "
                              "`curl -F files=@shirt.jpg 'https://HOST/api/predict?share=TOKEN'`")

    @api.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); please report it"}, status_code=500)

    @api.get("/health", summary="Liveness check")
    def health() -> dict:
        return {"status": "ok", "public": settings.public_mode()}

    @api.get("/model", summary="Classes, input shape, metrics card and preprocessing of the model")
    def model_info(share: str | None = Query(None), x_share_token: str | None = Header(None)) -> dict:
        model = _model(_source(share or x_share_token))
        return {"class_names": list(model.class_names), "input_shape": list(model.input_shape),
                "card": {k: v for k, v in model.card.items() if k != "config"}, "preprocess": model.preprocess,
                "upload_types": decode.UPLOAD_TYPES, "max_upload_bytes": decode.MAX_UPLOAD_BYTES,
                "max_files": serve.MAX_FILES, "max_request_bytes": max_request_bytes}

    @api.post("/predict", summary="Classify one or more uploaded images (multipart field `files`)")
    async def predict_endpoint(request: Request, files: list[UploadFile] = File(..., description="one or more images"),
                               share: str | None = Query(None),
                               x_share_token: str | None = Header(None)) -> JSONResponse:
        source = _source(share or x_share_token)
        if settings.public_mode():
            wait = limiter.allow(client_address(request), max(1, len(files)))
            if wait:
                return JSONResponse({"detail": f"too many images in a minute; try again in {wait:.0f} s"},
                                    status_code=429, headers={"Retry-After": str(int(wait) + 1)})
        return await serve.predict_response(_model(source), files)

    return serve.BodyLimit(api, max_request_bytes)
