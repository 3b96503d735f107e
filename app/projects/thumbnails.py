"""Small pictures of a project's images for its image table, as HTML <img> tags with the JPEG inline."""

from __future__ import annotations

import base64
import html
import io
import threading
from collections import OrderedDict

from PIL import Image

from formats.images import decode_image
from storage.files import FileStore

THUMB_HEIGHT = 48


class Thumbnails:
    """Thumbnail tags by image hash (content never changes under a hash), the `capacity` last used kept."""

    def __init__(self, files: FileStore, capacity: int = 2000):
        self.files = files
        self.capacity = capacity
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def tag(self, sha256: str, name: str) -> str:
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
        picture = Image.fromarray(decode_image(self.files.read(sha256)))  # the one decoder (formats.images)
        picture.thumbnail((THUMB_HEIGHT * 4, THUMB_HEIGHT))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=80)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        tag = f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(name)}" height="{picture.height}">'
        with self._lock:
            self._items[sha256] = tag
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return tag
