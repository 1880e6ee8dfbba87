"""`cifarlit serve`: real servers in subprocesses on free local ports, spoken to over HTTP as a client would."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from cifarlit.cli import cli_main
from conftest import MIXED, write_unlabelled_folder
from helpers import REPO, RunsCode, run_cli

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
CLASSES = list(MIXED)


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    cwd: Path  # the working directory it was started in, empty
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(base: Path, name: str, *args: str) -> Server:
    cwd, log = base / f"cwd_{name}", base / f"{name}.log"
    cwd.mkdir()
    port = free_port()
    with open(log, "wb") as out:  # own session: the fixture can end the whole group if a test leaves one behind
        proc = subprocess.Popen([sys.executable, "-m", "cifarlit", "serve", *args, "--port", str(port)], cwd=cwd,
                                env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return Server(proc, port, cwd, log)


def wait_ready(server: Server, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, f"the server exited ({server.proc.returncode}):\n{server.log.read_text()}"
        try:
            if requests.get(server.url("/health"), timeout=2).text == "ok":
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"not ready after {timeout} s:\n{server.log.read_text()}")


def failing_onnx(path: Path) -> Path:
    """An ONNX model shaped like an export whose every forward pass fails (a channel index out of range)."""
    from onnx import TensorProto, helper, save

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["idx"], value=helper.make_tensor("i", TensorProto.INT64, [3], [0, 1, 99])),
        helper.make_node("Gather", ["x", "idx"], ["g"], axis=3),
        helper.make_node("ReduceMean", ["g"], ["probabilities"], axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "fails", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="classes", value=json.dumps(CLASSES))
    save(model, str(path))
    return path


@pytest.fixture(scope="module")
def servers(own_run, tmp_path_factory):
    """Three servers started together (their startups overlap): the checkpoint, its ONNX export (two model
    workers), and an ONNX model that fails every forward pass."""
    base = tmp_path_factory.mktemp("serve")
    onnx = base / "model.onnx"
    with pytest.raises(SystemExit) as exported:
        cli_main(["export", "--ckpt_path", str(own_run.ckpt), "--output", str(onnx)])
    assert exported.value.code == 0
    batching = ("--max_batch_size", "64", "--batch_timeout", "0.05")
    started = {
        "torch": start(base, "torch", "--ckpt_path", str(own_run.ckpt), *batching),
        "onnx": start(base, "onnx", "--ckpt_path", str(onnx), "--model", "onnx", "--workers", "2", *batching),
        "failing": start(base, "failing", "--ckpt_path", str(failing_onnx(base / "fails.onnx")), "--model", "onnx"),
    }
    try:
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        for server in started.values():
            if server.proc.poll() is None:
                server.proc.terminate()
                try:
                    server.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.proc.pid, signal.SIGKILL)  # its own session: only what it started
                    server.proc.wait()


@pytest.fixture(scope="module")
def predicted(own_run, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """33 new images (gray PNG, JPEG, RGBA PNG of several sizes) and `cifarlit predict`'s CSV rows for them."""
    base = tmp_path_factory.mktemp("predicted")
    folder = base / "new"
    write_unlabelled_folder(folder, per_class=11)
    out = base / "predictions.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        run_cli("predict", "-c", str(REPO / "configs" / "default.yaml"), "--ckpt_path", str(own_run.ckpt),
                "--data.predict_dir", str(folder), "--output", str(out), "--probabilities", "true",
                "--trainer.logger.init_args.save_dir", str(base / "lightning_logs"))  # fmt: skip
    with open(out, newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    return folder, rows


def files_of(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def post(server: Server, data: bytes, how: str = "multipart", **kwargs) -> requests.Response:
    if how == "json":
        return requests.post(server.url("/predict"), json={"image": base64.b64encode(data).decode()}, timeout=60)
    return requests.post(server.url("/predict"), files={"image": ("photo.png", data)}, timeout=60, **kwargs)


def assert_answers_like_predict(response: requests.Response, row: dict) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"label", "probabilities"} and list(body["probabilities"]) == CLASSES
    assert body["label"] == row["label"]
    for name, p in body["probabilities"].items():
        assert p == pytest.approx(float(row[f"prob_{name}"]), abs=2e-5)  # the CSV has 6 decimals


def assert_one_sentence(response: requests.Response, status: int, *phrases: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.endswith(".") and "\n" not in detail and len(detail) < 400, detail
    assert any(phrase in detail for phrase in phrases), detail
    return detail


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_labels_and_probabilities_equal_predicts_for_the_same_files(servers, predicted, kind):
    folder, rows = predicted
    for path in files_of(folder):  # multipart, as curl -F image=@file sends it, and JSON base64
        assert_answers_like_predict(post(servers[kind], path.read_bytes()), rows[path.stem])
    for path in files_of(folder)[::5]:
        assert_answers_like_predict(post(servers[kind], path.read_bytes(), "json"), rows[path.stem])
    truth = [row["label"] for row in rows.values()]
    assert len(set(truth)) == len(CLASSES)  # the checkpoint tells the fixture classes apart: labels can differ


@pytest.mark.parametrize("kind", ["torch", "onnx"])  # onnx: two workers, counted together
def test_32_concurrent_requests_are_answered_right_in_fewer_forward_passes(servers, predicted, kind):
    folder, rows = predicted
    server = servers[kind]
    paths = files_of(folder)[:32]
    before = requests.get(server.url("/info"), timeout=10).json()
    barrier, answers = threading.Barrier(len(paths)), {}

    def client(path: Path) -> None:
        barrier.wait()
        answers[path.stem] = post(server, path.read_bytes())

    threads = [threading.Thread(target=client, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 32
    for stem, response in answers.items():
        assert_answers_like_predict(response, rows[stem])
    after = requests.get(server.url("/info"), timeout=10).json()
    assert after["images_predicted"] - before["images_predicted"] == 32
    assert 1 <= after["forward_passes"] - before["forward_passes"] < 32  # batched: one pass served several


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_info_tells_the_model_and_health_says_ok(servers, own_run, kind):
    server = servers[kind]
    info = requests.get(server.url("/info"), timeout=10).json()
    assert info["model"] == kind and info["classes"] == CLASSES and info["image_shape"] == [3, 32, 32]
    model_file = own_run.ckpt if kind == "torch" else server.cwd.parent / "model.onnx"
    assert info["model_file"] == model_file.name  # not its folder: /info answers anyone who reaches the port
    assert info["cifarlit_version"] == __import__("cifarlit").__version__
    workers = 1 if kind == "torch" else 2
    assert (info["max_batch_size"], info["batch_timeout"], info["workers_per_device"]) == (64, 0.05, workers)
    assert requests.get(server.url("/health"), timeout=10).text == "ok"


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* lists them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(local.rsplit(":", 1)[0])
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_binds_this_machine_only_and_writes_no_client_file(servers):
    for server in servers.values():
        assert _listeners(server.port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 or ::
        assert list(server.cwd.iterdir()) == []  # LitServe's generated client.py is not written


# --- bad requests: each a 4xx with one sentence, and the server answers the next request ---------------------


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int, color_type: int) -> bytes:
    """A PNG whose header declares ``width x height`` and whose data is one row: a bomb's header, built cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + width * (3 if color_type == 2 else 1)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def _patched(fmt: str, offset_of, width: int, height: int) -> bytes:
    """A small real ``fmt`` file with its declared size patched to ``width x height``."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    offset_of(data, width, height)
    return bytes(data)


def _jpeg_size(data: bytearray, width: int, height: int) -> None:
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)


def _bmp_size(data: bytearray, width: int, height: int) -> None:
    data[18:26] = struct.pack("<ii", width, height)


def _eps(marker: Path, dos: bool = False) -> bytes:
    """PostScript that would create ``marker`` if something ran it."""
    ps = (f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n({marker}) (w) file closefile\n"
          "newpath 0 0 moveto 32 32 lineto stroke showpage\n%%EOF\n").encode()  # fmt: skip
    if not dos:
        return ps
    return b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, len(ps), 0, 0, 0, 0) + b"\xff\xff" + ps  # DOS EPS


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.png", b"not really")
    return buf.getvalue()


NOT_AN_IMAGE = ("not an image", "cannot be decoded")
BOMB = ("pixels, too many to decode",)
HOSTILE = {  # name: (bytes given the marker path, phrases one of which the sentence has)
    "random bytes": (lambda m: np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(), NOT_AN_IMAGE),
    "text": (lambda m: b"this is a text file, not a picture\n" * 20, NOT_AN_IMAGE),
    "truncated PNG": (
        lambda m: _png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8))[:400],
        NOT_AN_IMAGE,
    ),  # fmt: skip
    "pickle that runs code": (lambda m: pickle.dumps(RunsCode(m)), NOT_AN_IMAGE),
    "zip archive": (lambda m: _zip(), NOT_AN_IMAGE),
    "SVG": (
        lambda m: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"/>',
        NOT_AN_IMAGE,
    ),  # fmt: skip
    "EPS": (lambda m: _eps(m), NOT_AN_IMAGE),
    "DOS EPS": (lambda m: _eps(m, dos=True), NOT_AN_IMAGE),
    "PDF": (lambda m: b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n", NOT_AN_IMAGE),
    "PNG bomb 30000x30000 RGB": (lambda m: _png_claiming(30000, 30000, 2), BOMB),
    "PNG bomb 10000x10000 gray (under PIL's error, over its warning)": (
        lambda m: _png_claiming(10000, 10000, 0),
        BOMB,
    ),  # fmt: skip
    "JPEG bomb 30000x30000": (lambda m: _patched("JPEG", _jpeg_size, 30000, 30000), BOMB),
    "BMP bomb 30000x30000": (lambda m: _patched("BMP", _bmp_size, 30000, 30000), BOMB),
}


@pytest.fixture
def answers_after(servers, predicted):
    """Checks that a server still answers a good request correctly."""
    folder, rows = predicted
    path = files_of(folder)[0]

    def check(server: Server) -> None:
        assert_answers_like_predict(post(server, path.read_bytes()), rows[path.stem])

    return check


@pytest.mark.parametrize("how", ["multipart", "json"])
@pytest.mark.parametrize("kind", ["torch", "onnx"])
@pytest.mark.parametrize("variant", list(HOSTILE))
def test_a_hostile_or_broken_image_gets_400_runs_nothing_and_the_server_goes_on(
    servers, answers_after, tmp_path, variant, kind, how
):
    marker = tmp_path / "ran"
    make, phrases = HOSTILE[variant]
    started = time.monotonic()
    response = post(servers[kind], make(marker), how)
    assert_one_sentence(response, 400, *phrases)
    assert time.monotonic() - started < 10  # a bomb is refused from its header, not after decoding it
    assert not marker.exists()
    answers_after(servers[kind])


def _chunks(total: int):
    for _ in range(total // 2**20):
        yield b"\0" * 2**20


BIG = 50 * 2**20
BAD_BODIES = {  # name: (requests.post keyword arguments, built when used; status; phrase)
    "empty body": (lambda: {}, 400, "body is empty"),
    "empty JSON-typed body": (lambda: {"headers": {"Content-Type": "application/json"}}, 400, "body is empty"),
    "empty uploaded file": (lambda: {"files": {"image": ("photo.png", b"")}}, 400, "empty (0 bytes)"),
    "empty base64 string": (lambda: {"json": {"image": ""}}, 400, "empty (0 bytes)"),
    "wrong multipart field": (
        lambda: {"files": {"photo": ("photo.png", _png(np.zeros((8, 8, 3), np.uint8)))}},
        400,
        "no field 'image'",
    ),  # fmt: skip
    "wrong JSON key": (lambda: {"json": {"img": "aGVsbG8="}}, 400, "no key 'image'"),
    "image as a text field": (
        lambda: {"data": {"image": "photo.png"}, "files": {"other": ("x", b"1")}},
        400,
        "text, not a file",
    ),  # fmt: skip
    "JSON that is a list": (lambda: {"json": [1, 2]}, 400, "no key 'image'"),
    "JSON image a number": (lambda: {"json": {"image": 3}}, 400, "not a base64 string"),
    "broken JSON": (
        lambda: {"data": b'{"image": ', "headers": {"Content-Type": "application/json"}},
        400,
        "not valid JSON",
    ),  # fmt: skip
    "bad base64": (lambda: {"json": {"image": "@@not base64@@"}}, 400, "not valid base64"),
    "truncated base64": (lambda: {"json": {"image": "aGVsbG8gd29ybGQ"}}, 400, "not valid base64"),
    "plain text body": (lambda: {"data": b"photo", "headers": {"Content-Type": "text/plain"}}, 415, "is not accepted"),
    "form-encoded body": (lambda: {"data": {"image": "photo"}}, 415, "is not accepted"),
    "multipart without boundary": (
        lambda: {"data": b"xx", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "cannot be parsed",
    ),  # fmt: skip
    "50 MB upload": (lambda: {"files": {"image": ("photo.png", b"\0" * BIG)}}, 413, "larger than 20 MB"),
    "50 MB JSON": (lambda: {"json": {"image": "A" * BIG}}, 413, "larger than 20 MB"),
    "50 MB chunked, no length": (
        lambda: {"data": _chunks(BIG), "headers": {"Content-Type": "application/json"}},
        413,
        "larger than 20 MB",
    ),  # fmt: skip
}


@pytest.mark.parametrize("variant", list(BAD_BODIES))
def test_a_bad_request_body_gets_a_4xx_sentence_and_the_server_goes_on(servers, answers_after, variant):
    kwargs, status, phrase = BAD_BODIES[variant]
    response = requests.post(servers["torch"].url("/predict"), timeout=60, **kwargs())
    assert_one_sentence(response, status, phrase)
    answers_after(servers["torch"])


def test_a_failing_model_gets_500_at_once_and_never_hangs(servers, predicted):
    folder, _ = predicted
    server, data = servers["failing"], files_of(folder)[0].read_bytes()
    for _ in range(2):
        detail = assert_one_sentence(post(server, data), 500, "the model failed on a batch of 1 image (")
        assert "InvalidArgument" in detail  # onnxruntime's error type, named
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(server, data))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # post's own timeout is 60 s: a hang fails there
    assert [r.status_code for r in results] == [500] * 4
    assert requests.get(server.url("/health"), timeout=10).text == "ok"
    assert "the model failed on a batch" in server.log.read_text()  # the traceback is in the server's log


# --- the command line ---------------------------------------------------------------------------------------


def serve_cli(monkeypatch, capsys, *args: str) -> str:
    """``cifarlit serve ARGS`` in this process, which must refuse before serving; returns its stderr line."""
    import cifarlit.commands.serve

    monkeypatch.setattr(
        cifarlit.commands.serve, "run", lambda *a: pytest.fail("the server started despite a bad option")
    )
    with pytest.raises(SystemExit) as exited:
        cli_main(["serve", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


OPTIONS = {  # name: (arguments after --ckpt_path <checkpoint>, phrase)
    "privileged port": (["--port", "80"], "--port 80 is not valid: use a whole number from 1024 to 65535"),
    "port not a number": (["--port", "http"], "--port 'http' is not valid"),
    "host of another machine": (["--host", "192.0.2.1"], "--host '192.0.2.1' is not valid: use 127.0.0.1, 0.0.0.0"),
    "batch of 0": (["--max_batch_size", "0"], "--max_batch_size 0 is not valid"),
    "negative batch timeout": (["--batch_timeout", "-1"], "--batch_timeout -1.0 is not valid"),
    "batch timeout 0 (LitServe would poll nonstop)": (["--batch_timeout", "0"], "--batch_timeout 0.0 is not valid"),
    "no workers": (["--workers", "0"], "--workers 0 is not valid"),
    "unknown accelerator": (["--accelerator", "tpu"], "--accelerator 'tpu' is not valid: use auto, cpu, cuda or mps"),
    "unknown model kind": (["--model", "tensorflow"], "--model 'tensorflow' is not valid: use torch or onnx"),
    "unknown option": (["--reload", "true"], "unrecognized arguments: --reload true"),
    "checkpoint with --model onnx": (["--model", "onnx"], "run `cifarlit export --ckpt_path"),
}


@pytest.mark.parametrize("variant", list(OPTIONS))
def test_a_bad_option_is_one_sentence_and_exit_2(own_run, monkeypatch, capsys, variant):
    args, phrase = OPTIONS[variant]
    assert phrase in serve_cli(monkeypatch, capsys, "--ckpt_path", str(own_run.ckpt), *args)


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX model that is not a cifarlit export: float input, no class names."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_model_files_are_refused_before_serving_and_run_nothing(own_run, monkeypatch, capsys, tmp_path):
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"net.w": RunsCode(marker)}, "hyper_parameters": {}}, crafted)
    disguised = tmp_path / "crafted.onnx"
    disguised.write_bytes(crafted.read_bytes())
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + os.urandom(200))
    cases = [
        (["--ckpt_path", str(tmp_path / "missing.ckpt")], "does not exist"),
        (["--ckpt_path", str(tmp_path / "missing.onnx"), "--model", "onnx"], "does not exist"),
        (["--ckpt_path", str(crafted)], "reading it would run as code"),
        (["--ckpt_path", str(disguised), "--model", "onnx"], "cannot be read by onnxruntime"),
        (["--ckpt_path", str(garbage), "--model", "onnx"], "cannot be read by onnxruntime"),
        (["--ckpt_path", str(_foreign_onnx(tmp_path / "other.onnx")), "--model", "onnx"], "is not a file written by"),
        (["--ckpt_path", str(disguised)], "is an ONNX file: serve it with --model onnx"),
        ([], "cifarlit serve needs --ckpt_path"),
    ]
    for args, phrase in cases:
        assert phrase in serve_cli(monkeypatch, capsys, *args), args
    assert not marker.exists()


def test_a_port_in_use_is_one_sentence(own_run, monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = serve_cli(monkeypatch, capsys, "--ckpt_path", str(own_run.ckpt), "--port", str(port))
    assert f"--port {port} cannot be used on 127.0.0.1" in err


# --- last, as it ends the server -----------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found |= {int(child)} | _descendants(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path(f"/proc/self/task/{os.getpid()}/children").exists(), reason="reads Linux's /proc")
def test_sigterm_stops_the_server_and_every_process_it_started_within_seconds(servers):
    server = servers["torch"]
    children = _descendants(server.proc.pid)
    assert len(children) >= 2  # LitServe's HTTP server and model worker, at least
    with requests.Session() as client:  # a kept-alive connection must not hold the shutdown up
        assert client.get(server.url("/health"), timeout=10).text == "ok"
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)
    assert _listeners(server.port) == set()
    assert list(server.cwd.iterdir()) == []
