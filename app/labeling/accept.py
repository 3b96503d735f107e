"""Accepting an image: PIQ of its latest proposal against the accepted annotation, then the next image."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from app.context import UserState, on_image, require_image, require_project
from app.labeling.images import first_look, next_open_image
from app.services import Services
from formats.rle import decode_rle
from resi_core.labels import normalize_name
from storage import repo
from storage.errors import Conflict


def _piq_parts(segments: Iterable[repo.Segment]) -> list[tuple[np.ndarray, str, bool, float]]:
    return [(decode_rle(s.rle), normalize_name(s.class_name), s.isthing, s.score or 1.0) for s in segments]


@dataclass(frozen=True)
class AcceptResult:
    state: UserState
    message: str
    piq: float | None
    next_image_id: int | None
    ok: bool = True
    # Nothing was accepted because the image has no segments: accept again with empty_ok=True to mean it.
    asks_empty: bool = False


def accept(svc: Services, state: UserState, user: str, empty_ok: bool = False) -> AcceptResult:
    """Accept the annotation, record PIQ of the latest proposal against it, and move to the next image.
    An image without segments is accepted only with `empty_ok` (the user said it has nothing to label)."""
    from resi_core.metrics.piq import piq_of_masks

    project_id, image_id = require_project(state), require_image(state)
    if state.pending is not None:  # accepting now would silently drop the user's clashing edit
        return AcceptResult(state, "Your last edit clashed with someone else's and is not saved: use 'Save mine "
                            "anyway' or 'Reload' first, then accept.", None, None, ok=False)
    with svc.sessions() as session:
        annotation = repo.current_annotation(session, image_id)
        proposal = repo.latest_proposal(session, image_id)
    if not annotation.segments and not empty_ok:
        return AcceptResult(state, "This image has no segments. Accept it as an image with nothing to label?",
                            None, None, ok=False, asks_empty=True)
    score = model_version_id = None
    sq = rq = None
    if proposal is not None:
        result = piq_of_masks(_piq_parts(repo.proposal_segments(proposal)), _piq_parts(annotation.segments))
        score, sq, rq, model_version_id = result.piq, result.sq, result.rq, proposal.model_version_id
    try:
        with svc.sessions.begin() as session:
            repo.accept(session, image_id, state.version, user, piq=score, model_version_id=model_version_id,
                        sq=sq, rq=rq)
    except Conflict as exc:
        return AcceptResult(state, f"{exc} Reload to see the newest version, then accept again.", None, None, ok=False)
    next_id = next_open_image(svc, project_id, image_id, user)
    text = f"Accepted image {image_id}." + (f" PIQ of the proposal: {score:.3f}." if score is not None else "")
    text += " Accepted by mistake? Open it again and Undo."
    if next_id is not None:
        with svc.sessions.begin() as session:
            repo.claim_image(session, next_id, user, svc.config.claim_seconds)
    elif next_open_image(svc, project_id, image_id) is not None:
        text += " The images still open are being labeled by others right now."
    else:
        text += " Every image of the project is accepted."
    next_state, notice = first_look(svc, on_image(state, next_id))
    return AcceptResult(next_state, f"{text} {notice}" if notice else text, score, next_id)
