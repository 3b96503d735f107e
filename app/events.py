"""What every tab's events share: user-facing errors and the user's name.

Every event that can fail goes through `guarded`: a user sees one short message (a warning toast that
goes away on its own) and never a traceback, and nothing on screen changes. No red error badge is
left on the outputs, and no spinner keeps turning: the event ends normally, with every output skipped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from app.services import UserError
from formats.images import ImageError
from resi_core.labels import LabelError
from storage.errors import StorageError

log = logging.getLogger("resi.app")
F = TypeVar("F", bound=Callable[..., Any])
USER_ERRORS = (UserError, StorageError, LabelError, ImageError)
WARNING_SECONDS = 6  # long enough to read a sentence; the toast must not keep covering the tools


def guarded(fn: F) -> F:
    """Turn errors a user caused into one warning; log anything else and say that nothing was lost.
    Either way the event's outputs stay as they are (`gr.skip()`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            gr.Warning(str(exc), duration=WARNING_SECONDS)
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            gr.Warning(f"Something went wrong ({type(exc).__name__}). Everything saved before is safe; "
                       "the details are in the server log.", duration=WARNING_SECONDS)
        return gr.skip()

    return wrapper  # type: ignore[return-value]


def user_name(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "local") if request is not None else "local"


def remove_uploads(paths: Sequence[str | Path] | None, upload_root: str | Path) -> None:
    """Delete Gradio's temporary copies of uploaded files once they are stored or refused, with the
    folders Gradio made for them when those are left empty. Only files inside `upload_root` (the
    app's `Blocks.GRADIO_CACHE`) are touched: a path from anywhere else is left alone."""
    root = Path(upload_root).resolve()
    for raw in paths or ():
        path = Path(raw).absolute()
        if not path.resolve().is_relative_to(root) or path.resolve() == root or path.is_dir():
            continue
        path.unlink(missing_ok=True)
        folder = path.parent.resolve()
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
