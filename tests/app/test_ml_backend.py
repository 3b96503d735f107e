"""The Label Studio ML backend, driven over plain HTTP in the shapes of label-studio-ml-backend's api.py.

Masks coming back are read with Label Studio's brush RLE decoder restated here the way
label_studio_converter.brush.decode_rle reads them (a bit string, 32-bit count, 5-bit word size,
four 4-bit field sizes, then runs), not with formats.brush."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.ml_backend import RESIBackend, make_server
from app.services import Services
from formats import brush
from formats.rle import decode_rle
from storage import repo
from tests.app.conftest import write_image

H, W = 48, 64
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="person"/><Label value="road"/><Label value="tree"/>
  </BrushLabels>
</View>"""


def ls_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """label_studio_converter.brush.decode_rle, restated: alpha channel of the RGBA values, > 0."""
    bits = "".join(f"{byte:08b}" for byte in rle)
    at = 0

    def take(n: int) -> int:
        nonlocal at
        at += n
        return int(bits[at - n:at], 2)

    num, word = take(32), take(5) + 1
    sizes = [take(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        series = take(1)
        j = i + 1 + take(sizes[take(2)])
        if series:
            out[i:j] = take(word)
            i = j
        else:
            while i < j:
                out[i] = take(word)
                i += 1
    return out.reshape(height, width, 4)[:, :, 3] > 0


@pytest.fixture
def server(svc: Services) -> Iterator[tuple[str, RESIBackend]]:
    backend = RESIBackend(svc, "studio")
    httpd = make_server(backend, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", backend
    httpd.shutdown()
    httpd.server_close()


def call(url: str, payload: dict | None = None, auth: tuple[str, str] | None = None) -> tuple[int, dict]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_health_setup_and_predict_answer_in_label_studios_shapes(server, tmp_path: Path) -> None:
    url, _ = server
    assert call(url + "/health") == (200, {"status": "UP", "model_class": "RESIBackend"})
    assert call(url + "/") == (200, {"status": "UP", "model_class": "RESIBackend"})
    status, body = call(url + "/setup", {"project": "3.1700000000", "schema": CONFIG, "hostname": "http://ls:8080",
                                         "access_token": "t"})
    assert status == 200 and body == {"model_version": "fake-" + "f" * 12}

    image = write_image(tmp_path / "street.png", width=W, height=H)
    tasks = [{"id": 7, "data": {"image": str(image)}}, {"id": 8, "data": {"image": image.as_uri()}}]
    status, body = call(url + "/predict", {"tasks": tasks, "label_config": CONFIG, "project": "3.1700000000",
                                           "params": {"context": {}}})
    assert status == 200 and len(body["results"]) == 2
    prediction = body["results"][0]
    assert prediction["model_version"] == "fake-" + "f" * 12 and 0 < prediction["score"] <= 1
    labels = {}
    for result in prediction["result"]:
        assert (result["type"], result["from_name"], result["to_name"]) == ("brushlabels", "tag", "image")
        assert (result["original_width"], result["original_height"]) == (W, H)
        assert result["value"]["format"] == "rle"
        [label] = result["value"]["brushlabels"]
        labels[label] = ls_decode(result["value"]["rle"], H, W)
    # The fake predictor answers street's first class top-left and the typed class one row lower;
    # street's car is not in the label config, so it is not sent.
    person, tree = np.zeros((H, W), bool), np.zeros((H, W), bool)
    person[0:H // 2, 0:W // 2], tree[1:H // 2, 0:W // 2] = True, True
    assert set(labels) == {"person", "tree"}
    assert np.array_equal(labels["person"], person) and np.array_equal(labels["tree"], tree)


def test_webhook_stores_a_submitted_annotation_as_accepted(server, svc: Services, tmp_path: Path) -> None:
    url, _ = server
    image = write_image(tmp_path / "a.png", width=W, height=H)
    road = np.zeros((H, W), dtype=bool)
    road[30:, :] = True
    payload = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 3, "label_config": CONFIG},
        "task": {"id": 7, "data": {"image": str(image)}},
        "annotation": {"id": 11, "completed_by": {"email": "ann@example.org"}, "result": [
            {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": W,
             "original_height": H, "image_rotation": 0,
             "value": {"format": "rle", "rle": brush.encode(road), "brushlabels": ["road"]}}]},
    }
    status, body = call(url + "/webhook", payload)
    assert status == 201 and body["status"] == "ok" and body["result"]["segments"] == 1
    with svc.sessions() as s:
        project = repo.get_project_by_name(s, "studio")
        [accepted] = repo.accepted_annotations(s, project.id)
        [space] = repo.list_label_spaces(s, project.id)
    [segment] = accepted.segments
    assert (segment.class_name, segment.label_space, segment.isthing) == ("road", "label-studio", False)
    assert np.array_equal(decode_rle(segment.rle), road)
    assert [c["name"] for c in space.classes] == ["person", "road", "tree"]
    again = call(url + "/webhook", {**payload, "action": "ANNOTATION_UPDATED"})
    assert again[0] == 201 and again[1]["result"]["changed"] is False
    assert call(url + "/webhook", {**payload, "action": "PROJECT_UPDATED"}) == (200, {"status": "Unknown event"})


def test_bad_requests_get_one_clear_400(server, tmp_path: Path) -> None:
    url, _ = server
    status, body = call(url + "/predict", {"tasks": [{"id": 1, "data": {"image": "nowhere.png"}}],
                                           "label_config": CONFIG})
    assert status == 400 and "task 1" in body["error"]
    status, body = call(url + "/predict", {"tasks": [], "label_config": "<View><Image name='i' value='$i'/></View>"})
    assert status == 400 and "BrushLabels" in body["error"]
    assert call(url + "/nope", {})[0] == 404


def test_basic_auth(svc: Services) -> None:
    httpd = make_server(RESIBackend(svc, "studio"), "127.0.0.1", 0, basic_auth=("ls", "secret"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert call(url + "/health")[0] == 401
        assert call(url + "/health", auth=("ls", "wrong"))[0] == 401
        assert call(url + "/health", auth=("ls", "secret"))[0] == 200
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_brush_codec_round_trips_and_matches_the_restated_decoder() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((37, 300)) < 0.3
    mask[:, 40:] = False
    mask[5:30, 100:] = True  # a run longer than 2**16 values (4 per pixel) would need splitting too
    big = np.ones((200, 100), dtype=bool)  # 80,000 values in one run: more than one 16-bit field
    for m in (mask, big, np.zeros((3, 4), dtype=bool)):
        rle = brush.encode(m)
        assert np.array_equal(ls_decode(rle, *m.shape), m) and np.array_equal(brush.decode(rle, *m.shape), m)
