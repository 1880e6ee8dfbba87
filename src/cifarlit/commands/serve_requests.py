"""What a request to ``cifarlit serve`` may carry, and how it becomes pixels or a 4xx with one sentence.

:class:`ImageGate` reads each ``POST /predict`` in the HTTP server's process, before LitServe queues it: the body
(at most :data:`MAX_BODY` bytes), its image (multipart field ``image``, or JSON ``{"image": "<base64>"}``) and
the pixels, decoded by :func:`cifarlit.data.images.decode` as ``cifarlit predict`` decodes a file, at the size and
channels the model was trained on. Only what passed all of that reaches the model's worker, as the pixels
alone (:func:`pixels`). LitServe answers a batch as one: a bad image decoded in the worker would fail every
request batched with it. Decoding here also runs beside the worker's forward passes, not before them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

from cifarlit.data import images

MAX_BODY = 20 * 2**20  # bytes: a 12-megapixel JPEG, base64-encoded, fits; the model reads 32x32 of it anyway
FIELD = "image"
PIXELS = "pixels"  # the key of the body the gate hands LitServe: uint8 (H, W, C) pixels, base64
HOW = (
    "send one image file as the multipart field 'image' (curl -F image=@photo.jpg) or as JSON "
    '{"image": "<base64 of the file>"} with Content-Type: application/json'
)


class BadRequest(Exception):
    """A request the gate answers itself: the HTTP status and the one sentence of the answer."""

    def __init__(self, status: int, sentence: str) -> None:
        super().__init__(sentence)
        self.status = status


class ImageGate:
    """ASGI middleware in front of LitServe's ``POST path``: a valid image goes on as its pixels, anything
    else is answered here with a 4xx and ``{"detail": "<one sentence>"}``. Other paths pass through."""

    def __init__(self, app, *, path: str, size: int, channels: int) -> None:
        self.app, self.path, self.size, self.channels = app, path, size, channels
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; this process decodes strangers' images, so
        # the warning refuses them too, before a pixel is decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive)
            data = await image_bytes(scope, body)
            image = await run_in_threadpool(decode, data, self.size, self.channels)  # Pillow decodes off the GIL
        except BadRequest as err:
            await JSONResponse({"detail": str(err)}, status_code=err.status)(scope, receive, send)
            return
        payload = json.dumps({PIXELS: base64.b64encode(image.tobytes()).decode()}).encode()
        kept = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await self.app({**scope, "headers": headers}, _replay(payload, receive), send)


def pixels(request: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """The uint8 ``(H, W, C)`` image of a body :class:`ImageGate` wrote, for a model of input ``shape`` (C, H, W)."""
    c, h, w = shape
    return np.frombuffer(bytearray(base64.b64decode(request[PIXELS])), dtype=np.uint8).reshape(h, w, c)  # writable


async def read_body(scope, receive) -> bytes:
    """The whole body, refused (413) as soon as its declared or received size passes :data:`MAX_BODY`."""
    too_large = BadRequest(413, f"the request body is larger than {MAX_BODY // 2**20} MB; send the image smaller "
                           f"(the model reads it at its trained size anyway).")  # fmt: skip
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "the client closed the connection before its request body arrived.")
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:  # a chunked body declares no length
            raise too_large
        if not message.get("more_body", False):
            return b"".join(chunks)


async def image_bytes(scope, body: bytes) -> bytes:
    """The image file a request body carries, by its Content-Type: multipart or JSON."""
    if not body:
        raise BadRequest(400, f"the request body is empty; {HOW}.")
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        data = await _from_multipart(scope, body)
    elif media == "application/json":
        data = _from_json(body)
    else:
        raise BadRequest(415, f"Content-Type {media or '(none)'!r} is not accepted; {HOW}.")
    if not data:
        raise BadRequest(400, f"the image in the request is empty (0 bytes); {HOW}.")
    return data


async def _from_multipart(scope, body: bytes) -> bytes:
    try:
        form = await Request(scope, _replay(body)).form()
    except (HTTPException, MultiPartException) as err:  # starlette's own 400 for a malformed body
        reason = getattr(err, "detail", None) or getattr(err, "message", "")
        raise BadRequest(400, f"the multipart body cannot be parsed ({reason.rstrip('.')}); {HOW}.") from None
    try:
        field = form.get(FIELD)
        if field is None:
            raise BadRequest(400, f"the multipart body has no field 'image' (its fields: {list(form.keys())}); {HOW}.")
        if not isinstance(field, UploadFile):
            raise BadRequest(400, "the multipart field 'image' is text, not a file: upload the file itself "
                             "(curl -F image=@photo.jpg, with the @).")  # fmt: skip
        return await field.read()
    finally:
        await form.close()


def _from_json(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadRequest(400, f"the body is not valid JSON ({err.__class__.__name__}); {HOW}.") from None
    if not isinstance(payload, dict) or FIELD not in payload:
        got = f"its keys: {list(payload)}" if isinstance(payload, dict) else f"a JSON {type(payload).__name__}"
        raise BadRequest(400, f"the JSON body has no key 'image' ({got}); {HOW}.")
    value = payload[FIELD]
    if not isinstance(value, str):
        raise BadRequest(400, f"the JSON 'image' is a {type(value).__name__}, not a base64 string; {HOW}.")
    if value.startswith("data:") and ";base64," in value[:100]:  # a data URL, as a browser's FileReader gives
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, "the JSON 'image' is not valid base64; encode the file's bytes, e.g. "
                         "base64 -w0 photo.jpg.") from None  # fmt: skip


def decode(data: bytes, size: int, channels: int) -> np.ndarray:
    """The image as uint8 ``(size, size, channels)``, read by :func:`cifarlit.data.images.decode` (as ``cifarlit
    predict`` reads a file), or the 400 that says why it cannot be."""
    try:
        return images.decode(io.BytesIO(data), size, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(400, f"the image declares more than {Image.MAX_IMAGE_PIXELS:,} pixels, too many to decode "
                         f"safely (a decompression bomb?); send it resized, the model reads it at {size}x{size} "
                         "anyway.") from None  # fmt: skip
    except Image.UnidentifiedImageError:
        kinds = ", ".join(ext.lstrip(".").upper() for ext in images.IMAGE_EXTENSIONS)
        raise BadRequest(400, f"the file sent is not an image cifarlit reads ({kinds}); {HOW}.") from None
    except Exception as err:  # Pillow raises several types for damaged files
        raise BadRequest(400, f"the image cannot be decoded ({err.__class__.__name__}); it may be truncated or "
                         "damaged: send the whole file.") from None  # fmt: skip


def _replay(body: bytes, then=None):
    """An ASGI ``receive`` that gives ``body`` once, then defers to ``then`` (the client's disconnect)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive
