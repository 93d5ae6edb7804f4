"""pneumonia-serve: the API answers as pneumonia-predict does, refuses hostile and broken
uploads with a 4xx that names the problem and goes on serving, keeps uploads off the disk,
takes a bearer token, batches concurrent requests, and stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumonia.inference.runner import predict_files
from pneumonia.models.checkpoint import load_checkpoint
from tests.dicom_files import write_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pneumonia.serving.app import Settings, create_app  # noqa: E402
from pneumonia.serving.model import ServedModel  # noqa: E402

CPU = torch.device("cpu")


def _served(ckpt_path: Path) -> ServedModel:
    return ServedModel(load_checkpoint(ckpt_path), device=CPU, precision="32-true")


def _client(ckpt_path: Path, **settings) -> TestClient:
    settings = {"max_upload_bytes": 8 * 2**20, **settings}
    return TestClient(create_app(_served(ckpt_path), Settings(**settings)))


def _send(client: TestClient, data: bytes, name: str = "x.png", **params):
    return client.post("/predict", files={"file": (name, data)}, params=params)


@pytest.fixture(scope="module")
def images(trained: dict) -> list[Path]:
    return sorted((trained["root"] / "test").rglob("*.jpeg"))[:6]


@pytest.fixture(scope="module")
def client(trained: dict):
    with _client(trained["ckpt"]) as c:
        yield c


def test_predict_answers_what_pneumonia_predict_answers(client, trained, images) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    rows = predict_files(ckpt, images, device=CPU, precision="32-true")
    for path, row in zip(images, rows, strict=True):
        answer = _send(client, path.read_bytes(), path.name).json()
        assert answer["probability"] == pytest.approx(row["probability"], abs=1e-6)
        assert answer["prediction"] == row["prediction"]
        assert answer["threshold"] == pytest.approx(row["threshold"])
        assert answer["shift_score"] == pytest.approx(row["shift_score"], rel=1e-5, abs=1e-6)
        assert answer["in_distribution"] == row["in_distribution"]
        assert answer["threshold_rule"] == str(ckpt.decision.threshold_rule)
        assert answer["image"]["format"] == "JPEG"
        assert (answer["warning"] is None) == answer["in_distribution"]


def test_a_dicom_without_an_extension_is_read_as_training_reads_it(
    client, trained, tmp_path
) -> None:
    pixels = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)
    path = write_dicom(tmp_path / "IM0001", pixels, window=(2048, 4096))
    row = predict_files(load_checkpoint(trained["ckpt"]), [path], device=CPU, precision="32-true")
    answer = _send(client, path.read_bytes(), "IM0001").json()
    assert answer["image"]["format"] == "DICOM"
    assert answer["probability"] == pytest.approx(row[0]["probability"], abs=1e-6)


@pytest.mark.real_data
def test_an_upload_of_a_real_xray_gets_the_pixels_its_file_gets(trained, originals) -> None:
    from pneumonia.data.images import load_gray

    pre = load_checkpoint(trained["ckpt"]).preprocessing
    served = _served(trained["ckpt"])
    for path in (
        sorted((originals / "NORMAL").iterdir())[:3]
        + sorted((originals / "PNEUMONIA").iterdir())[:3]
    ):
        data = path.read_bytes()
        assert np.array_equal(load_gray(data, pre.max_pixels), load_gray(path, pre.max_pixels))
        assert torch.equal(served.decode(data).image, pre.load(path))


def test_gradcam_comes_as_a_png_over_the_original(client, images) -> None:
    answer = _send(client, images[0].read_bytes(), gradcam="true").json()
    width, height = Image.open(images[0]).size
    for key in ("gradcam", "image_png"):
        head, _, data = answer[key].partition(",")
        assert head == "data:image/png;base64"
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.size == (width, height)  # under 1024 px a side: the original's size
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["gradcam"].split(",")[1]))))
    assert overlay.ndim == 3
    red, green, blue = overlay[..., 0], overlay[..., 1], overlay[..., 2]
    assert not (np.array_equal(red, green) and np.array_equal(green, blue))  # a heat map, not gray


@pytest.mark.slow
def test_the_onnx_backend_answers_as_torch_does(trained, images, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    by_torch = _served(trained["ckpt"])
    by_onnx = ServedModel(
        load_checkpoint(trained["ckpt"]), device=CPU, precision="32-true", backend="onnx",
        export_dir=tmp_path / "onnx",
    )  # fmt: skip
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    assert by_onnx.record["backend"] == "onnx"
    decoded = [by_torch.decode(p.read_bytes()).image for p in images]
    for a, b in zip(by_torch.score(decoded), by_onnx.score(decoded), strict=True):
        assert b["probability"] == pytest.approx(a["probability"], abs=1e-4)
        assert b["shift_score"] == pytest.approx(a["shift_score"], rel=1e-4, abs=1e-3)
        assert (b["prediction"], b["in_distribution"]) == (a["prediction"], a["in_distribution"])


def test_health_and_the_model_record(client, trained) -> None:
    assert client.get("/health").status_code == 200
    record = client.get("/model").json()
    ckpt = load_checkpoint(trained["ckpt"])
    assert record["classes"] == ckpt.class_names
    assert record["threshold"] == pytest.approx(ckpt.threshold)
    assert record["decision"]["temperature"] == pytest.approx(ckpt.decision.temperature)
    assert record["shift"]["threshold"] == pytest.approx(ckpt.shift.threshold)
    assert sum(record["validation"]["images"].values()) == sum(ckpt.class_probabilities["images"])
    assert record["validation"]["checkpoint_chosen_by"]["monitor"] == "val/loss"
    assert record["recalibration"] is None
    assert record["training"]["data"] == str(trained["root"])


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def test_hostile_and_broken_uploads_get_a_4xx_that_names_the_problem(
    trained, images, tmp_path, caplog
) -> None:
    no_pixels = write_dicom(tmp_path / "report.dcm", None).read_bytes()
    cases = {
        "text": (b"hello, this is not an X-ray\n" * 10, 422, "not an image"),
        "empty": (b"", 400, "empty"),
        "too large": (os.urandom(70_000), 413, "max_upload_mb"),
        "bomb": (_png_claiming(100_000, 100_000), 422, "decompression bomb"),
        "no pixels": (no_pixels, 422, "no pixel data"),
        "truncated": (images[0].read_bytes()[:300], 422, "not an image"),
    }
    with _client(trained["ckpt"], max_upload_bytes=64_000) as client, caplog.at_level(logging.INFO):
        for name, (data, status, words) in cases.items():
            response = _send(client, data, "<b onmouseover=alert(1)>\n.png")
            assert response.status_code == status, name
            assert words in response.json()["detail"], (name, response.json())
            assert "<b onmouseover" not in response.json()["detail"]
        no_file = client.post("/predict", files={"image": ("a.png", images[0].read_bytes())})
        assert no_file.status_code == 400
        assert "'file'" in no_file.json()["detail"]
        not_multipart = client.post("/predict", content=images[0].read_bytes())
        assert not_multipart.status_code == 415
        good = _send(client, images[0].read_bytes())  # and it goes on serving
        assert good.status_code == 200
        assert 0 <= good.json()["probability"] <= 1
    assert "<b onmouseover" not in caplog.text  # the client's file name never reaches the log


def test_dicom_header_text_stays_out_of_the_logs(trained, tmp_path, caplog) -> None:
    narrow = (1000 + np.arange(64 * 48).reshape(64, 48) % 50).astype(np.uint16)  # no window
    path = write_dicom(tmp_path / "a.dcm", narrow, patient_id="PID-SECRET-7731")
    with _client(trained["ckpt"]) as client, caplog.at_level(logging.DEBUG):
        assert _send(client, path.read_bytes(), "a.dcm").status_code == 200
    assert "no window" in caplog.text  # the decode's warning is there...
    assert "PID-SECRET-7731" not in caplog.text  # ... and the header's identifiers are not
    assert "an uploaded DICOM" in caplog.text


def test_uploads_stay_in_memory_unless_kept(trained, tmp_path, monkeypatch) -> None:
    big = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) > 1_200_000  # over the 1 MB at which Starlette's own parser spools to disk

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    with _client(trained["ckpt"]) as client:
        for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
            monkeypatch.setattr(tempfile, name, no_disk)
        assert _send(client, data).status_code == 200
        monkeypatch.undo()
    kept = tmp_path / "uploads"
    with _client(trained["ckpt"], uploads=kept) as client:
        assert _send(client, data, "../../patient name.png").status_code == 200
    (saved,) = kept.iterdir()
    assert saved.read_bytes() == data
    assert "patient" not in saved.name
    assert saved.suffix == ".png"


def test_a_bearer_token_guards_the_model_but_not_the_page(trained, images) -> None:
    data = images[0].read_bytes()
    with _client(trained["ckpt"], token="s3cret") as client:
        assert _send(client, data).status_code == 401
        assert client.get("/model").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            client.post("/predict", files={"file": ("a", data)}, headers=wrong).status_code == 401
        )
        right = {"Authorization": "Bearer s3cret"}
        assert (
            client.post("/predict", files={"file": ("a", data)}, headers=right).status_code == 200
        )
        assert client.get("/model", headers=right).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200  # the page asks for the token itself


def test_concurrent_requests_are_batched_and_answered_as_alone(trained, images) -> None:
    import httpx

    served = _served(trained["ckpt"])
    alone = {p: served.score([served.decode(p.read_bytes()).image])[0] for p in images}
    app = create_app(served, Settings(max_upload_bytes=2**20, max_batch=4, batch_wait_s=0.3))

    async def together() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
            sends = [c.post("/predict", files={"file": ("x", p.read_bytes())}) for p in images]
            return [r.json() for r in await asyncio.gather(*sends)]

    answers = asyncio.run(together())
    assert max(app.state.batcher.batches) > 1  # some went through together
    assert max(app.state.batcher.batches) <= 4
    for path, answer in zip(images, answers, strict=True):
        assert answer["probability"] == pytest.approx(alone[path]["probability"], abs=1e-5)
        assert answer["prediction"] == alone[path]["prediction"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen | None = None, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not answer /health in time")


def _multipart(data: bytes) -> tuple[bytes, bytes]:
    boundary = b"pneumonia-test-boundary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="x.jpeg"\r\nContent-Type: application/octet-stream\r\n\r\n')  # fmt: skip
    return boundary, head + data + b"\r\n--" + boundary + b"--\r\n"


def _request_head(port: int, boundary: bytes, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n{auth}\r\n"
    ).encode()


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(trained, images, tmp_path) -> None:
    """The command as users run it: its run folder, the token from the environment, then a
    SIGTERM while a request is in flight."""
    import httpx

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pneumonia.serve", f"ckpt_path={trained['run']}",
         f"serve.port={port}", "precision=32-true", f"hydra.run.dir={tmp_path / 'serve'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PNEUMONIA_SERVE_TOKEN": "from-the-environment"},
    )  # fmt: skip
    try:
        _wait_for(port, process)
        files = {"file": ("x.jpeg", images[0].read_bytes())}
        assert httpx.post(f"http://127.0.0.1:{port}/predict", files=files).status_code == 401
        boundary, body = _multipart(images[0].read_bytes())
        head = _request_head(port, boundary, len(body), token="from-the-environment")
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(head + body[:100])  # in flight
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None  # still waiting for the request in flight
            conn.sendall(body[100:])
            reply = conn.makefile("rb").read().decode("latin-1")
        assert reply.startswith("HTTP/1.1 200"), reply[:300]
        assert '"probability"' in reply
        assert process.wait(timeout=60) == 0
        log = process.stdout.read()
        assert "Stopped on SIGTERM" in log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(scope="module")
def live_server(trained: dict):
    """The app on a real uvicorn, in a thread of this process (signals stay the test's)."""
    import threading

    import uvicorn

    app = create_app(_served(trained["ckpt"]), Settings(max_upload_bytes=8 * 2**20))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_a_client_that_disconnects_mid_upload_leaves_the_server_serving(
    live_server, images, caplog
) -> None:
    import httpx

    port = int(live_server.rsplit(":", 1)[1])
    boundary, body = _multipart(images[0].read_bytes())
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(_request_head(port, boundary, len(body) + 10_000) + body[:200])
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while "disconnected mid-upload" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
    assert "disconnected mid-upload" in caplog.text
    files = {"file": ("x.jpeg", images[0].read_bytes())}
    assert httpx.post(f"{live_server}/predict", files=files, timeout=30).status_code == 200


def _overflowing(page) -> list[str]:
    """Elements that reach past the right edge of the window (a laptop screen)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('body *')].filter((e) => {
               const r = e.getBoundingClientRect();
               return r.width > 0 && r.right > window.innerWidth + 0.5;
           }).map((e) => e.tagName + '#' + e.id)"""
    )


def test_the_page_shows_what_the_api_answers(live_server, browser, images, tmp_path) -> None:
    import httpx

    from tests.conftest import LAPTOP

    noise = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    odd = tmp_path / '<img src=x onerror="window.pwned=1">.png'
    Image.fromarray(noise).save(odd)
    record = httpx.get(f"{live_server}/model").json()
    page = browser.new_page(viewport=LAPTOP)
    blocked: list[str] = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live_server)
               else (blocked.append(route.request.url), route.abort()))  # fmt: skip
    page.goto(live_server + "/")
    page.wait_for_selector(f"#model-facts dd:has-text('{record['checkpoint']}')")
    seen_warning = False
    for path in [images[0], images[-1], odd]:
        files = {"file": ("x", path.read_bytes())}
        answer = httpx.post(f"{live_server}/predict", files=files, timeout=60).json()
        page.set_input_files("#file", str(path))
        page.wait_for_function(
            "name => document.getElementById('file-name').textContent === name", arg=path.name
        )
        page.wait_for_function("() => document.getElementById('gradcam').complete")
        assert page.text_content("#probability") == f"{answer['probability']:.3f}"
        assert page.text_content("#threshold") == f"{answer['threshold']:.3f}"
        assert page.text_content("#decision").startswith(answer["prediction"] + ":")
        assert answer["threshold_rule"] in page.text_content("#rule")
        warning = page.locator("#warning")
        assert warning.is_visible() == (not answer["in_distribution"])
        if warning.is_visible():
            seen_warning = True
            assert "unlike the images the model was trained on" in warning.text_content()
        for picture in ("#image", "#gradcam"):
            assert page.evaluate(f"document.querySelector('{picture}').naturalWidth") > 0
        assert _overflowing(page) == []
        assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
    assert seen_warning  # the noise image is unlike the training images
    assert page.evaluate("window.pwned") is None  # the file name stayed text
    assert page.locator("img[src='x']").count() == 0
    assert blocked == []  # one self-contained page: nothing from anywhere else
    page.close()
