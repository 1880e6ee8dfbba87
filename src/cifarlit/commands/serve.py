"""`cifarlit serve --ckpt_path X`: a trained model behind HTTP, batched by LitServe.

    cifarlit serve --ckpt_path lightning_logs/mine/version_0/checkpoints/last.ckpt
    curl -F image=@photo.jpg http://127.0.0.1:8000/predict

``POST /predict`` takes one image (multipart field ``image``, or JSON ``{"image": "<base64>"}``) and answers
``{"label": ..., "probabilities": {class: p, ...}}``: the label ``cifarlit predict`` gives the same file, since
the image is decoded as predict decodes it (:mod:`cifarlit.commands.serve_requests`) and the model is the
exported one, normalization inside (:func:`cifarlit.commands.export.load`, which reads the checkpoint as tensors
and plain values only).
``--model onnx`` serves a file written by ``cifarlit export --format onnx`` with onnxruntime instead.
``GET /health`` answers ``ok`` once the workers are ready; ``GET /info`` gives the classes, image shape, model
file, versions, and how many forward passes served how many images. LitServe's workers gather the requests
that arrive within ``--batch_timeout`` (up to ``--max_batch_size``) into one forward pass.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import litserve as ls
import numpy as np
from fastapi import HTTPException

from cifarlit import __version__
from cifarlit.commands.serve_requests import ImageGate, pixels
from cifarlit.utils.errors import CifarlitError, report

API_PATH = "/predict"
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds: this machine only, or every interface
EXPORTED = "a file written by `cifarlit export --format onnx`"
log = logging.getLogger(__name__)


# the options are main's signature: `cifarlit serve` parses them with jsonargparse (cli.run_command)


VALID = {
    "port": "a whole number from 1024 to 65535",
    "host": ", ".join(HOSTS),
    "max_batch_size": "a whole number of 1 or more",
    "batch_timeout": "seconds above 0 and below 30, e.g. 0.01",
    "workers": "a whole number of 1 or more",
    "accelerator": "auto, cpu, cuda or mps",
    "model": "torch or onnx",
}


@dataclass(frozen=True)
class Served:
    """What the server needs to know about its model before any worker loads it."""

    kind: str  # "torch" or "onnx"
    path: Path
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W), what images are decoded to


class ClassifierAPI(ls.LitAPI):
    """LitServe's hooks: the gate's pixels in, a batch through the model, ``{"label", "probabilities"}`` out."""

    def __init__(self, served: Served, workers: int, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.served, self.workers = served, workers
        # forward passes, images: shared by the workers (spawned) and the HTTP servers (forked), read by /info
        self.counts = multiprocessing.get_context("spawn").Array("q", 2)

    def setup(self, device: str) -> None:
        # Half the cores for the model workers, half for the HTTP processes that decode the images: a model
        # given every core spins its idle OpenMP threads between passes and starves the decoding.
        threads = max(1, (os.cpu_count() or 1) // (2 * self.workers))
        self.forward = _load(self.served, device, threads)

    def decode_request(self, request):  # unannotated: LitServe reads the annotation to choose the body parser
        return pixels(request, self.served.shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        single = x.ndim == 3  # max_batch_size 1: LitServe passes the one image as it is
        batch = x[None] if single else x
        with self.counts.get_lock():
            self.counts[0] += 1
            self.counts[1] += len(batch)
        try:
            probs = self.forward(batch)
        except Exception as err:
            what = f"a batch of {len(batch)} image{'s' if len(batch) > 1 else ''}"
            log.exception("the model failed on %s", what)
            raise HTTPException(500, f"the model failed on {what} ({err.__class__.__name__}); the server's log has "
                                "the details.") from None  # fmt: skip
        return probs[0] if single else probs

    def encode_response(self, output):  # unannotated: LitServe reads the annotation as the response type
        probs = [float(p) for p in output]
        return {
            "label": self.served.classes[int(np.argmax(probs))],
            "probabilities": dict(zip(self.served.classes, probs, strict=True)),
        }


def _load(served: Served, device: str, threads: int):
    """The model as a function: uint8 ``(B, H, W, C)`` -> float32 probabilities ``(B, K)``, on ``device``."""
    if served.kind == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        gpu = device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = [("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)})] if gpu else []
        session = ort.InferenceSession(str(served.path), opts, providers=[*providers, "CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x})[0]
    import torch

    from cifarlit.commands.export import load

    if device == "cpu":
        torch.set_num_threads(threads)
    model = load(served.path)[0].to(device)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return forward


def describe(path: Path, kind: str) -> Served:
    """Read the model once before serving, so a bad file is one sentence and not a server that never gets ready."""
    if kind == "torch" and path.suffix == ".onnx":
        raise CifarlitError(f"--ckpt_path {path} is an ONNX file: serve it with --model onnx.")
    if kind == "onnx" and path.suffix == ".ckpt":
        raise CifarlitError(f"--model onnx serves {EXPORTED}, not the checkpoint {path}: run `cifarlit export "
                            f"--ckpt_path {path} --format onnx` and serve the .onnx it writes.")  # fmt: skip
    if kind == "onnx":
        return _describe_onnx(path)
    from cifarlit.commands.export import load

    model, shape = load(path)  # the checkpoints module's safe reader: a crafted file runs nothing
    return Served("torch", path.resolve(), tuple(model.classes), tuple(shape))


def _describe_onnx(path: Path) -> Served:
    import onnxruntime as ort

    if not path.is_file():
        raise CifarlitError(f"--ckpt_path {path} does not exist; with --model onnx pass {EXPORTED}.")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for damaged or foreign files
        raise CifarlitError(f"--ckpt_path {path} cannot be read by onnxruntime ({err.__class__.__name__}); pass "
                            f"{EXPORTED}.") from None  # fmt: skip
    if not _looks_exported(session):
        raise CifarlitError(f"--ckpt_path {path} is not {EXPORTED} (it needs uint8 'images' of shape (batch, size, "
                            "size, 1 or 3) and the class names in its 'classes' metadata); export one from a "
                            "checkpoint.")  # fmt: skip
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    h, w, c = session.get_inputs()[0].shape[1:]
    return Served("onnx", path.resolve(), tuple(classes), (c, h, w))


def _looks_exported(session) -> bool:
    """Whether an onnxruntime session has the one input, one output and class names ``cifarlit export`` writes."""
    try:
        classes = json.loads(session.get_modelmeta().custom_metadata_map.get("classes", "null"))
    except ValueError:
        return False
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        return False
    if len(inputs) != 1 or len(outputs) != 1 or inputs[0].name != "images" or inputs[0].type != "tensor(uint8)":
        return False
    shape = inputs[0].shape[1:]
    sizes_ok = len(shape) == 3 and all(isinstance(n, int) for n in shape) and shape[0] == shape[1]
    out = outputs[0].shape[-1]  # a name or None when dynamic
    return sizes_ok and shape[2] in (1, 3) and (not isinstance(out, int) or out == len(classes))


def check(args: dict) -> None:
    """Each option of :func:`main` in its range; a bad one is a CifarlitError naming it."""
    bad = {
        "port": not 1024 <= args["port"] <= 65535,
        "host": args["host"] not in HOSTS,
        "max_batch_size": args["max_batch_size"] < 1,
        # 0 would make LitServe's batching loop poll its queue without pause (most of a core, idle or not);
        # 30 s is LitServe's request timeout
        "batch_timeout": not 0 < args["batch_timeout"] < 30,
        "workers": args["workers"] < 1,
    }
    for name, wrong in bad.items():
        if wrong:
            raise CifarlitError(f"--{name} {args[name]!r} is not valid: use {VALID[name]}.")


def _check_port(host: str, port: int) -> None:
    """Bind and release the port, so a busy one is a sentence, not uvicorn's exit after the workers started."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            sock.bind((host, port))
        except OSError as err:
            raise CifarlitError(f"--port {port} cannot be used on {host} ({err.strerror}); pick another port, or "
                                "stop what listens there.") from None  # fmt: skip


def build(served: Served, args: dict) -> ls.LitServer:
    """The LitServer: our /info, the request gate in front of /predict, no OpenAPI pages."""
    api = ClassifierAPI(served, args["workers"], args["max_batch_size"], args["batch_timeout"])
    c, h, _ = served.shape
    server = ls.LitServer(
        api,
        accelerator=args["accelerator"],
        workers_per_device=args["workers"],
        info_path="/litserve/info",  # /info is ours, below; LitServe's own (its server settings) moves here
        disable_openapi_url=True,
        middlewares=[(ImageGate, {"path": API_PATH, "size": h, "channels": c})],
    )
    about = {
        # the file's name, not where it lies: /info answers whoever reaches the port
        "model": served.kind, "model_file": served.path.name, "classes": list(served.classes),
        "image_shape": list(served.shape), "input": "one image file: multipart field 'image' or JSON {'image': base64}",
        "max_batch_size": args["max_batch_size"], "batch_timeout": args["batch_timeout"],
        "workers_per_device": args["workers"], "devices": server.devices,
        "cifarlit_version": __version__, "litserve_version": ls.__version__,
    }  # fmt: skip

    async def info() -> dict:
        return {**about, "forward_passes": api.counts[0], "images_predicted": api.counts[1]}

    server.app.add_api_route("/info", info, methods=["GET"])
    return server


def run(server: ls.LitServer, host: str, port: int) -> None:
    """Serve until Ctrl+C or SIGTERM, then stop every process the server started."""

    main_pid = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != main_pid:  # a forked HTTP server, which uvicorn shut down and now ends by the signal
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        raise KeyboardInterrupt  # what LitServer.run shuts down gracefully on

    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
    except KeyboardInterrupt:  # before LitServer.run's own handling began
        pass
    except RuntimeError as err:
        if "failed to start" not in str(err):  # LitServe: "One or more workers failed to start"
            raise
        raise CifarlitError(f"the model workers did not start ({err}); the log above says why.") from None
    finally:
        for child in multiprocessing.active_children():  # whatever a shutdown mid-start left behind
            child.terminate()
            child.join(5)
            if child.is_alive():
                child.kill()


def main(
    ckpt_path: Path,
    port: int = 8000,
    host: str = "127.0.0.1",
    max_batch_size: int = 64,
    batch_timeout: float = 0.01,
    workers: int = 1,
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = "auto",
    model: Literal["torch", "onnx"] = "torch",
) -> int:
    """Serve a trained model over HTTP: POST an image to /predict, get its label and class probabilities.

    Args:
        ckpt_path: a checkpoint written by `cifarlit fit`, or with --model onnx a file written by `cifarlit export`.
        port: the TCP port to listen on (1024-65535).
        host: 127.0.0.1 answers this machine only; 0.0.0.0 (or :: for IPv6) every network interface.
        max_batch_size: at most this many concurrent requests go through the model as one forward pass.
        batch_timeout: seconds a worker waits for more requests to fill a batch (above 0: LitServe polls its queue).
        workers: model worker processes per device.
        accelerator: where the model runs: auto (a GPU when there is one), cpu, cuda or mps.
        model: torch runs the checkpoint's network; onnx runs an exported .onnx file with onnxruntime.
    """
    args = {"ckpt_path": ckpt_path, "port": port, "host": host, "max_batch_size": max_batch_size,
            "batch_timeout": batch_timeout, "workers": workers, "accelerator": accelerator, "model": model}  # fmt: skip
    try:
        check(args)
        served = describe(args["ckpt_path"], args["model"])
        _check_port(args["host"], args["port"])
        server = build(served, args)
        c, h, w = served.shape
        print(f"cifarlit serve: {served.kind} model {served.path} ({len(served.classes)} classes, {c}x{h}x{w} "
              f"images) at http://{args['host']}:{args['port']}{API_PATH}; GET /health says ok once ready; "
              "Ctrl+C or SIGTERM stops it", flush=True)  # fmt: skip
        run(server, args["host"], args["port"])
    except CifarlitError as err:
        return report(err)
    return 0
