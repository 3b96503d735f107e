"""A Label Studio ML backend: `python -m app.ml_backend --project NAME [--port 9090]`.

Label Studio (Settings > Model > Connect model, URL http://HOST:9090) asks it for pre-annotations
and tells it about submitted annotations. It answers label-studio-ml-backend's contract
(label_studio_ml/api.py):
- `GET /` and `GET /health`: `{"status": "UP", "model_class": "RESIBackend"}`;
- `POST /setup` `{"project": "ID.TIMESTAMP", "schema": LABEL_CONFIG, ...}`: `{"model_version": ...}`;
- `POST /predict` `{"tasks": [...], "label_config": ..., "project": ..., "params": {...}}`:
  `{"results": [{"result": [brushlabels results], "score", "model_version"}, ...]}`, one per task,
  each mask as Label Studio's brush RLE (`formats.brush`);
- `POST /webhook` `{"action": "ANNOTATION_CREATED" | "ANNOTATION_UPDATED", "project", "task",
  "annotation"}`: the annotation's brush masks become the image's accepted annotation of label space
  `--label-space` in project `--project` (a correction a person made); 201 `{"status": "ok", "result"}`.
  Other actions get 200 `{"status": "Unknown event"}`.
- `GET /metrics`: `{}`.
With `--basic-auth-user/--basic-auth-pass` (or BASIC_AUTH_USER/BASIC_AUTH_PASS) every route needs
HTTP basic auth, as label-studio-ml-backend's does.

Like that repository's SAM example, this file only converts formats: the predictor (loaded on the
first /predict, never at import) segments, and storage keeps what was submitted. The classes asked
for are the label config's BrushLabels labels: those a trained label space has are asked through
that space, the others as typed (ad-hoc) classes.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from app.config import DEFAULT_CHECKPOINT, DEFAULT_DATA_DIR, DEFAULT_TEXT_ENCODER, AppConfig
from app.services import Services, UserError, open_services
from formats import brush
from formats.errors import FormatError
from formats.images import ImageError, decode_image
from formats.names import normalize_name
from formats.rle import encode_mask
from storage import repo
from storage.errors import InvalidInput, NotFound
from storage.importer import write_accepted

log = logging.getLogger(__name__)
SUBMITTED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
MAX_BODY = 256 * 1024 * 1024


class BadRequest(ValueError):
    """A request Label Studio (or whoever calls) can fix: answered 400 with the message."""


@dataclass(frozen=True)
class LabelConfig:
    """What a Label Studio labeling config says about brush masks: the BrushLabels tag's name
    (`from_name`), the Image tag's name (`to_name`), the task data key of the image, and the labels."""

    from_name: str
    to_name: str
    image_key: str
    labels: tuple[str, ...]

    @staticmethod
    def parse(schema: str) -> LabelConfig:
        try:
            root = ET.fromstring(schema)
        except ET.ParseError as exc:
            raise BadRequest(f"the label config is not valid XML: {exc}") from None
        tag = next((t for t in root.iter() if t.tag.lower() == "brushlabels"), None)
        if tag is None:
            raise BadRequest("the label config has no <BrushLabels> tag: RESI answers with brush masks")
        to_name = tag.get("toName", "")
        image = next((t for t in root.iter() if t.tag.lower() == "image" and t.get("name") == to_name), None)
        if image is None or not image.get("value", "").startswith("$"):
            raise BadRequest(f"the label config has no <Image name={to_name!r} value=\"$...\"> for its BrushLabels")
        labels = tuple(t.get("value", "") for t in tag.iter() if t.tag.lower() == "label" and t.get("value"))
        if not labels:
            raise BadRequest("the label config's <BrushLabels> has no <Label value=...>")
        return LabelConfig(tag.get("name", ""), to_name, image.get("value", "")[1:], labels)


class RESIBackend:
    """Label Studio's requests in, RESI's predictor and storage behind, Label Studio's shapes out."""

    def __init__(self, services: Services, project: str, label_space: str = "label-studio"):
        self.services = services
        self.project = project
        self.label_space = label_space
        self.hostname = ""  # where Label Studio serves uploaded files (from /setup)
        self.access_token = ""

    # --- routes ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": type(self).__name__}

    def setup(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("schema"):
            LabelConfig.parse(payload["schema"])
        self.hostname = str(payload.get("hostname") or self.hostname)
        self.access_token = str(payload.get("access_token") or self.access_token)
        return {"model_version": self.model_version()}

    def predict(self, payload: dict[str, Any]) -> dict[str, Any]:
        config = LabelConfig.parse(str(payload.get("label_config") or ""))
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of Label Studio tasks")
        predictor = self.services.model.predictor()
        request, wanted = self._request(predictor, config.labels)
        version = self.model_version()
        results = []
        for task in tasks:
            rgb = decode_image(self._image_bytes(task, config))
            height, width = rgb.shape[:2]
            found = [(s, wanted[normalize_name(s.class_name)]) for s in predictor.predict(rgb, request, with_instances=False).segments
                     if normalize_name(s.class_name) in wanted]
            result = [{"id": s.id[:10], "from_name": config.from_name, "to_name": config.to_name,
                       "original_width": width, "original_height": height, "image_rotation": 0,
                       "value": {"format": "rle", "rle": brush.encode(s.mask), "brushlabels": [label]},
                       "score": float(s.score), "type": "brushlabels", "readonly": False} for s, label in found]
            score = sum(r["score"] for r in result) / len(result) if result else 0.0
            results.append({"result": result, "score": score, "model_version": version})
        return {"results": results}

    def webhook(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if payload.get("action") not in SUBMITTED:
            return 200, {"status": "Unknown event"}
        project, task, annotation = (payload.get(k) for k in ("project", "task", "annotation"))
        if not all(isinstance(v, dict) for v in (project, task, annotation)):
            raise BadRequest("a webhook needs 'project', 'task' and 'annotation' objects")
        config = LabelConfig.parse(str(project.get("label_config") or ""))
        known = self._known_classes()
        segments = []
        for i, result in enumerate(annotation.get("result") or []):
            if str(result.get("type", "")).lower() != "brushlabels" or result.get("from_name") != config.from_name:
                continue
            value = result.get("value") or {}
            try:
                mask = brush.decode(value.get("rle") or [], int(result["original_height"]),
                                    int(result["original_width"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise BadRequest(f"annotation result {i}: {exc}") from None
            label = (value.get("brushlabels") or [""])[0]
            if not label:
                raise BadRequest(f"annotation result {i} has no brushlabels label")
            segments.append((label, known.get(normalize_name(label), True), encode_mask(mask), False))
        data = self._image_bytes(task, config)
        user = str((annotation.get("completed_by") or {}).get("email", "") if isinstance(
            annotation.get("completed_by"), dict) else annotation.get("completed_by") or "") or "label-studio"
        name = Path(urllib.parse.urlparse(str(task.get("data", {}).get(config.image_key, ""))).path).name
        with self.services.sessions.begin() as session:
            try:
                project_row = repo.get_project_by_name(session, self.project)
            except NotFound:
                project_row = repo.create_project(session, self.project)
            repo.save_label_space(session, project_row.id, self.label_space,
                                  [{"name": label, "isthing": known.get(normalize_name(label), True)}
                                   for label in config.labels], {"label_studio": str(project.get("id", ""))})
            image, _, changed = write_accepted(session, self.services.files, project_row.id, self.label_space, data,
                                               name or f"task-{task.get('id')}", segments, user=user[:100])
        return 201, {"status": "ok", "result": {"image_id": image.id, "segments": len(segments),
                                                "changed": changed, "label_space": self.label_space}}

    # --- helpers --------------------------------------------------------------------------------

    def model_version(self) -> str:
        info = self.services.model.info()
        return f"{info.name}-{info.sha256[:12]}"

    def _known_classes(self) -> dict[str, bool]:
        """normalized class name -> isthing, from the checkpoint's trained label spaces."""
        return {normalize_name(c.name): c.isthing for s in self.services.model.info().label_spaces for c in s.classes}

    def _request(self, predictor: Any, labels: Sequence[str]) -> tuple[Any, dict[str, str]]:
        """The predictor request for the labels, and normalized class name -> Label Studio label."""
        from resi_core.predictor import AdHocRequest, MixedRequest, SpacesRequest

        wanted = {normalize_name(label): label for label in labels}
        spaces = tuple(name for name, space in predictor.label_spaces.items()
                       if any(normalize_name(c.name) in wanted for c in space.classes))
        covered = {normalize_name(c.name) for name in spaces for c in predictor.label_spaces[name].classes}
        adhoc = tuple(label for key, label in wanted.items() if key not in covered)
        if spaces and adhoc:
            return MixedRequest(spaces, adhoc), wanted
        return (SpacesRequest(spaces) if spaces else AdHocRequest(adhoc)), wanted

    def _image_bytes(self, task: Any, config: LabelConfig) -> bytes:
        """The task's image: a local path or file:// URL, or fetched from Label Studio (its /data/... URLs,
        with the access token /setup gave)."""
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BadRequest("a task needs a 'data' object")
        ref = task["data"].get(config.image_key)
        if not isinstance(ref, str) or not ref:
            raise BadRequest(f"task {task.get('id')}: data has no image under {config.image_key!r}")
        parsed = urllib.parse.urlparse(ref)
        if parsed.scheme in ("", "file") and Path(urllib.parse.unquote(parsed.path)).is_file():
            return Path(urllib.parse.unquote(parsed.path)).read_bytes()
        url = ref if parsed.scheme in ("http", "https") else urllib.parse.urljoin(self.hostname + "/", ref)
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise BadRequest(f"task {task.get('id')}: image {ref!r} is neither a file here nor a URL "
                             "(Label Studio gives its host name in /setup)")
        headers = {"Authorization": f"Token {self.access_token}"} if self.access_token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
                return response.read()
        except OSError as exc:
            raise BadRequest(f"task {task.get('id')}: cannot fetch the image {url}: {exc}") from None


def make_server(backend: RESIBackend, host: str, port: int, basic_auth: tuple[str, str] | None = None
                ) -> ThreadingHTTPServer:
    """An HTTP server answering Label Studio's ML backend routes with `backend`."""
    expected = None
    if basic_auth is not None:
        expected = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if expected is None or hmac.compare_digest(self.headers.get("Authorization", ""), expected):
                return True
            self._send(401, {"error": "Unauthorized"}, {"WWW-Authenticate": 'Basic realm="Login required"'})
            return False

        def do_GET(self) -> None:  # http.server's names
            if not self._authorized():
                return
            path = urllib.parse.urlparse(self.path).path
            if path in ("/", "/health"):
                self._send(200, backend.health())
            elif path == "/metrics":
                self._send(200, {})
            else:
                self._send(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            path = urllib.parse.urlparse(self.path).path
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise BadRequest("the request body is too large")
                payload = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(payload, dict):
                    raise BadRequest("the request body must be a JSON object")
                if path == "/predict":
                    self._send(200, backend.predict(payload))
                elif path == "/setup":
                    self._send(200, backend.setup(payload))
                elif path == "/webhook":
                    self._send(*backend.webhook(payload))
                else:
                    self._send(404, {"error": f"no route {path}"})
            except (BadRequest, UserError, InvalidInput, FormatError, ImageError, json.JSONDecodeError) as exc:
                self._send(400, {"error": str(exc)})
            except Exception:
                log.exception("%s failed", path)
                self._send(500, {"error": "internal error; see the backend's log"})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ml_backend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", required=True, help="RESI project that keeps submitted annotations "
                                                         "(created when it does not exist)")
    parser.add_argument("--label-space", default="label-studio",
                        help="label space the submitted annotations are stored as (default: label-studio)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090, Label Studio's usual)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="RESI data folder (default ./resi-data)")
    parser.add_argument("--database-url", help="database URL (default: the data folder's SQLite file)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the model (default: the demo)")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="text encoder (default minilm)")
    parser.add_argument("--device", default="auto", help="torch device (default: CUDA when present)")
    parser.add_argument("--basic-auth-user", default=os.environ.get("BASIC_AUTH_USER"),
                        help="require HTTP basic auth (also $BASIC_AUTH_USER); with --basic-auth-pass")
    parser.add_argument("--basic-auth-pass", default=os.environ.get("BASIC_AUTH_PASS"),
                        help="the password (also $BASIC_AUTH_PASS)")
    args = parser.parse_args(argv)
    if bool(args.basic_auth_user) != bool(args.basic_auth_pass):
        print("error: basic auth needs both --basic-auth-user and --basic-auth-pass", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"error: --port {args.port} is not a port number", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = AppConfig(host=args.host, port=args.port, data_dir=args.data_dir, database_url=args.database_url,
                       checkpoint=args.checkpoint, text_encoder=args.text_encoder, device=args.device)
    try:
        services = open_services(config)
        server = make_server(RESIBackend(services, args.project, args.label_space), args.host, args.port,
                             (args.basic_auth_user, args.basic_auth_pass) if args.basic_auth_user else None)
    except (OSError, InvalidInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"RESI's Label Studio ML backend on http://{args.host}:{args.port} (project {args.project!r})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
