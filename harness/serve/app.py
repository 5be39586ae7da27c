"""The FastAPI app of ``harness serve``: the page at ``/``, the JSON API under ``/api``.

``POST /api/predict`` takes the image as the multipart form field ``file`` and answers what
``harness predict --format json`` prints for one image: ``{"image", "in_distribution",
"findings": [{"name", "probability", "threshold", "above"}, ...]}`` in the model's finding
order; with ``?saliency=true`` also ``input`` (the decoded image as a PNG data URL) and
``saliency`` (per finding its Grad-CAM overlay as a PNG data URL). Bad input is a 4xx status
with ``{"detail": "<one line>"}``: 400 for a request without the field, 413 for a file over
the size limit, 422 for a file that is not a usable chest X-ray (not an image, a colour
image, too many pixels, or unlike the training images by the out-of-distribution check; a demo
model trained on synthetic images answers instead, with ``in_distribution: false``, since
every real X-ray is unlike its training images).

The upload is parsed in memory as it streams in (python-multipart's ``MultipartParser``),
never spooled to a temporary file as Starlette's form parser does past 1 MB, and the reading
stops as soon as the body passes the limit; the image is neither written nor logged, and
only the base name of the client's file name is echoed. ``/docs`` (Swagger UI) and
``/redoc`` come with their files from here (fastapi-offline), so they work offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
import threading
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline

from deepchest.inference import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Bundle,
    ImageError,
    grey_png,
    overlay_png,
    read_image,
)

DISCLAIMER = (
    "The results are AI-generated, for informational purposes only, and not a substitute for "
    "professional medical advice. Always consult a healthcare professional."
)
SYNTHETIC_BANNER = (
    "Demo model: it was trained on synthetic images, not on real X-rays, so its output on a "
    "real X-ray means nothing."
)
PROBABILITY_TEXT = (
    "A probability is the model's score for a finding, from 0 to 1, not the chance that the "
    "patient has it. A finding is marked when its probability is at or above its operating "
    "threshold (the line on its bar), chosen on the validation images to balance sensitivity "
    "and specificity (Youden's J); a score below the line does not rule the finding out."
)
HEADER_MARGIN = 16 * 1024  # the multipart envelope around the file: boundaries and headers


class UploadError(Exception):
    """A request the API refuses before decoding; ``status`` is its HTTP status."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status


async def read_upload(request: Request, field: str, max_bytes: int) -> tuple[str, bytes]:
    """The file name and bytes of multipart form field ``field``, parsed in memory as the
    body streams in. Raises :class:`UploadError`: 400 without a multipart body or the field,
    413 once the body or the file passes ``max_bytes``."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"send the image as the multipart form field {field!r}")
    limit = f"the file is over the limit of {max_bytes / 2**20:g} MB"
    state: dict[str, Any] = {"name": None, "filename": "", "header": b"", "value": b""}
    found: dict[str, Any] = {}
    buffer = io.BytesIO()

    def header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def header_end() -> None:
        if state["header"].lower() == b"content-disposition":
            _, params = parse_options_header(state["value"])
            state["name"] = params.get(b"name", b"").decode("utf-8", "replace")
            state["filename"] = params.get(b"filename", b"").decode("utf-8", "replace")
        state["header"], state["value"] = b"", b""

    def part_begin() -> None:
        state["name"], state["filename"] = None, ""

    def part_data(data: bytes, start: int, end: int) -> None:
        if state["name"] == field and "bytes" not in found:
            found["started"] = True
            buffer.write(data[start:end])
            if buffer.tell() > max_bytes:
                raise UploadError(413, limit)

    def part_end() -> None:
        if state["name"] == field:
            if "bytes" in found:
                raise UploadError(400, f"more than one form field {field!r}: send one image")
            found["bytes"], found["filename"] = buffer.getvalue(), state["filename"]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part_begin,
            "on_part_data": part_data,
            "on_part_end": part_end,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + HEADER_MARGIN:
                raise UploadError(413, limit)
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError, a broken stream
        raise UploadError(400, f"a malformed multipart body ({type(exc).__name__})") from None
    if "bytes" not in found:
        if found.get("started"):  # python-multipart's finalize() accepts a body cut short
            raise UploadError(400, "the upload ended before the file was complete")
        raise UploadError(400, f"no multipart form field {field!r} with the image")
    # the name as the client gave it, but never a client's folders
    name = found["filename"].replace("\\", "/").rsplit("/", 1)[-1]
    return name or "upload", found["bytes"]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def model_info(bundle: Bundle) -> dict[str, Any]:
    """What the page's model card shows: from ``model.json``, and the page's fixed texts."""
    card = bundle.card
    training = card["training"]
    return {
        "disclaimer": DISCLAIMER,
        "synthetic": bundle.synthetic,
        "synthetic_banner": SYNTHETIC_BANNER if bundle.synthetic else None,
        "probability_text": PROBABILITY_TEXT,
        "backbone": card["backbone"],
        "findings": bundle.findings,
        "input_size": bundle.input_size,
        "dataset": training.get("dataset"),
        "split_sizes": training.get("split_sizes"),
        "method": training.get("method"),
        "seed": training.get("seed"),
        "test_auroc": card["metrics"].get("test_auroc"),
        "val_auroc": card["metrics"].get("val_auroc"),
        "thresholds": card["thresholds"],
        "ood_false_refusal_rate": card["ood"].get("test_false_refusal_rate"),
        "harness_version": card["harness"].get("version"),
    }


def render_page(bundle: Bundle) -> str:
    """The page with the disclaimer (and, for a synthetic-data model, the banner) written
    into it, so they show before any script runs."""
    page = resources.files("harness.serve").joinpath("page.html").read_text(encoding="utf-8")
    banner = (
        f'<div class="banner" id="synthetic-banner" role="note">{html.escape(SYNTHETIC_BANNER)}'
        "</div>"
        if bundle.synthetic
        else ""
    )
    return page.replace("__DISCLAIMER__", html.escape(DISCLAIMER)).replace(
        "__SYNTHETIC_BANNER__", banner
    )


def create_app(
    bundle: Bundle,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FastAPI:
    """The app over a loaded ``bundle``; uploads over ``max_bytes`` or images over
    ``max_pixels`` are refused. Model calls hold one lock: Grad-CAM hooks the shared network,
    and on a CPU the forward passes gain nothing from running side by side."""
    # fastapi-offline: FastAPI with Swagger UI's and ReDoc's files served from here, not a CDN
    app = FastAPIOffline(
        title="DeepChest harness: chest X-ray interpretation (research demo)",
        description=DISCLAIMER,
        version=str(bundle.card["harness"].get("version") or "0"),
    )
    lock = threading.Lock()
    # decoding runs beside the model, but a 50-megapixel DICOM takes a few hundred MB: only
    # as many at once as there are cores
    decoding = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
    info = model_info(bundle)
    page = render_page(bundle)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "query")
        message = str(first.get("msg", "a bad request"))
        return JSONResponse({"detail": f"{where}: {message}" if where else message}, 422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/model", summary="The model card and the page's texts")
    def model() -> dict[str, Any]:
        return info

    def interpret(data: bytes, filename: str, saliency: bool) -> dict[str, Any]:
        with decoding:
            image = read_image(data, bundle.decode_size, max_pixels=max_pixels)
        with lock:
            prediction = bundle.predict(image[None])[0]
        # a demo model trained on synthetic images finds every real X-ray unlike its training
        # images: it answers under its banner, saying so, rather than refuse them all
        if not prediction.in_distribution and not bundle.synthetic:
            rate = info["ood_false_refusal_rate"]
            also = f" (it also refuses {rate:.0%} of real test images)" if rate else ""
            raise ImageError(
                "this image is unlike the chest X-rays the model was trained on, so it was "
                f"not interpreted{also}"
            )
        out: dict[str, Any] = {
            "image": filename,
            "in_distribution": prediction.in_distribution,
            "findings": bundle.findings_json(prediction),
        }
        if saliency:
            with lock:
                maps = bundle.saliency(image)
            out["input"] = _data_url(grey_png(image))
            out["saliency"] = [
                {"name": name, "overlay": _data_url(overlay_png(image, heat))}
                for name, heat in zip(bundle.findings, maps, strict=True)
            ]
        return out

    @app.post(
        "/api/predict",
        summary="Each finding's probability for one chest X-ray (PNG, JPEG or DICOM)",
        description=f"The image is the multipart form field `file`. {DISCLAIMER}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def predict(request: Request, saliency: bool = False) -> dict[str, Any]:
        filename, data = await read_upload(request, "file", max_bytes)
        return await run_in_threadpool(interpret, data, filename, saliency)

    return app
