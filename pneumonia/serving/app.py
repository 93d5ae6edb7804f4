"""The HTTP face of a served checkpoint (FastAPI on uvicorn): ``POST /predict``, ``GET
/model``, ``GET /health`` and the page at ``GET /``.

Uploads are read into memory, never onto disk (unless ``keep_uploads`` names a folder), up to
``max_upload_bytes``; the multipart body is parsed here, in memory, because Starlette's form
parser spools files over 1 MB to a temporary file. Every refusal is a 4xx whose ``detail``
names the problem; nothing a client sends (a file name, DICOM header text) is logged except
through ``ascii()``, and the page shows text only through ``textContent``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pneumonia.data.images import BadImageError
from pneumonia.serving.model import Batcher, ServedModel
from pneumonia.system.files import atomic_path

log = logging.getLogger(__name__)
PAGE = files("pneumonia.serving").joinpath("page.html")


@dataclass(frozen=True)
class Settings:
    max_upload_bytes: int
    token: str | None = None  # bearer token for /predict and /model; None: no auth
    uploads: Path | None = None  # where uploads are kept; None: nowhere (memory only)
    max_batch: int = 16
    batch_wait_s: float = 0.0


def create_app(served: ServedModel, settings: Settings) -> FastAPI:
    """The app around a loaded model: it answers as soon as it exists."""
    batcher = Batcher(served, max_batch=settings.max_batch, wait_s=settings.batch_wait_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(batcher.close)  # after the last request: finish, then stop

    app = FastAPI(title="pneumonia", lifespan=lifespan)
    app.state.batcher = batcher
    page = PAGE.read_text(encoding="utf-8")

    def authorise(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), settings.token.encode()
        ):
            raise HTTPException(
                401,
                "a bearer token is required: send 'Authorization: Bearer <serve.token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "checkpoint": served.record["checkpoint"]}

    @app.get("/model")
    def model(request: Request) -> dict[str, Any]:
        authorise(request)
        return served.record

    @app.post("/predict")
    async def predict(request: Request, gradcam: bool = False) -> JSONResponse:
        authorise(request)
        data = await _upload(request, settings.max_upload_bytes)
        try:
            decoded = await run_in_threadpool(served.decode, data)
        except BadImageError as e:
            log.info("refused an upload of %d bytes: %s", len(data), ascii(str(e)))
            raise HTTPException(422, f"not an image this model can read: {e}") from e
        if settings.uploads is not None:
            await run_in_threadpool(_keep, settings.uploads, data, decoded.kind)
        answer = await batcher.score(decoded.image)
        answer["image"] = {"format": decoded.kind, "width": decoded.gray.shape[1],
                           "height": decoded.gray.shape[0]}  # fmt: skip
        if gradcam:
            answer |= await batcher.call(lambda: served.gradcam(decoded))
        return JSONResponse(answer)

    return app


async def _upload(request: Request, limit: int) -> bytes:
    """The bytes of the multipart field ``file``, read into memory up to ``limit`` bytes of
    body (a larger body is refused as soon as it is known to be larger)."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise HTTPException(415, "send the image as multipart/form-data, in a field named 'file'")
    too_large = HTTPException(
        413, f"the upload is over serve.max_upload_mb ({limit / 2**20:g} MB): send a smaller file"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        log.info("a client disconnected mid-upload after %d bytes: nothing kept", len(body))
        raise HTTPException(400, "the client disconnected before the upload ended") from None
    parts = _parts(bytes(body), params[b"boundary"])
    uploads = [data for name, data in parts if name == "file"]
    if len(uploads) != 1:
        fields = sorted({name for name, _ in parts}) or ["none"]
        raise HTTPException(
            400,
            f"send exactly one image in the multipart field 'file' (got {len(uploads)}; "
            f"fields: {', '.join(ascii(f) for f in fields)})",
        )
    if not uploads[0]:
        raise HTTPException(400, "the upload is empty (0 bytes)")
    return uploads[0]


def _parts(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """(field name, bytes) of each part of a multipart/form-data body, in memory."""
    parts: list[tuple[str, bytes]] = []
    headers: dict[bytes, bytes] = {}
    field, value, data = bytearray(), bytearray(), bytearray()

    def header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def part_end() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        parts.append((name, bytes(data)))
        headers.clear()
        data.clear()

    callbacks = {
        "on_header_field": lambda b, s, e: field.extend(b[s:e]),
        "on_header_value": lambda b, s, e: value.extend(b[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda b, s, e: data.extend(b[s:e]),
        "on_part_end": part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise HTTPException(400, f"the multipart body cannot be read ({e})") from e
    return parts


def _keep(folder: Path, data: bytes, kind: str) -> None:
    """An upload kept under its content's hash (never under the name the client gave)."""
    suffix = {"DICOM": ".dcm", "PNG": ".png", "JPEG": ".jpeg"}.get(kind, ".img")
    target = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
    folder.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(data)
