"""What every tab's events share: user-facing errors and the user's name.

Every event that can fail goes through `guarded`, so a user sees one short message (gr.Error) and
never a traceback, and no state is overwritten.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from app.services import UserError
from resi_core.image_io import ImageError
from resi_core.labels import LabelError
from storage.errors import StorageError

log = logging.getLogger("resi.app")
F = TypeVar("F", bound=Callable[..., Any])
USER_ERRORS = (UserError, StorageError, LabelError, ImageError)


def guarded(fn: F) -> F:
    """Turn errors a user caused into one message; log anything else and say that nothing was lost."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(exc).__name__}). Everything saved before is safe; "
                "the details are in the server log.", print_exception=False,
            ) from None

    return wrapper  # type: ignore[return-value]


def user_name(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "local") if request is not None else "local"
