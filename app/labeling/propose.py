"""Proposals: the model's segments for the open image. Every new image of the project is proposed by a
background job instead (`start_prelabel`, app/finetune/jobs.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from app.context import (
    ClassSetChoice,
    UserState,
    load_context,
    model_version_id,
    require_image,
)
from app.labeling.edits import conflict
from app.labeling.images import UNFAMILIAR_HIDDEN, EditResult, hide_proposals, load_image, to_storage
from app.segments import SegmentView
from app.services import Proposal, Proposer, Services, UserError
from resi_core.labels import space_domain
from storage import repo
from storage.errors import Conflict, Correction
from storage.models import EventType, ImageStatus


def predict_segments(predictor: Proposer, rgb: np.ndarray, choice: ClassSetChoice
                     ) -> tuple[list[SegmentView], Proposal]:
    """Run ESF-OMI for the class set: trained spaces and typed names go in one request, so a typed class
    that a trained space also has ("car" and street's "car") is fused into one segment. Returns the
    segments and the prediction (its domain-aware OMI fields say which label spaces were held back)."""
    from resi_core.predictor import RequestError, class_set_request

    try:
        request = class_set_request(predictor.label_spaces, choice.label_spaces, choice.adhoc, choice.synonyms)
    except RequestError as exc:
        raise UserError(f"{exc} The class set asks for what the model in use lacks (it was learned by another "
                        "model version): switch the model on the Fine-tune tab, or change the class set.") from exc
    try:
        prediction = predictor.predict(rgb, request, with_instances=False)  # the AP list is for evaluation only
    except RequestError as exc:
        raise UserError(str(exc)) from exc
    views = [
        SegmentView(s.id, s.class_name, "+".join(s.label_spaces), np.asarray(s.mask, dtype=bool),
                    float(min(max(s.score, 0.0), 1.0)), s.isthing)
        for s in prediction.segments
    ]
    return views, prediction


def domain_note(domain_probs: dict[str, float], held: Sequence[str], threshold: float | None,
                asked: Sequence[str], inherited: dict[str, str] | None = None) -> str:
    """One sentence on domain-aware OMI for this image, or "" when it held nothing back. `asked`: the
    query sets of the request; the one that kept the normal threshold is named. `inherited`: label
    spaces added by fine-tuning -> the trained space whose images theirs look like."""
    if not held or not domain_probs or threshold is None:
        return ""
    domain_of = {s: space_domain(s, domain_probs, inherited or {}) for s in asked}
    kept = [s for s in asked if domain_of[s] in domain_probs and s not in held]
    likeliest = max(kept, key=lambda s: domain_probs[domain_of[s]], default=None)
    looks = ""
    if likeliest:
        domain = domain_of[likeliest]
        via = "" if domain == likeliest else f", the domain that {likeliest!r} inherited when it was fine-tuned"
        looks = (f"Of the chosen label spaces, this image looks most like {domain!r} training data{via} "
                 f"(p = {domain_probs[domain]:.2f}), so ")
    return (f"{looks}proposals of {', '.join(map(repr, held))} needed a score of at least {threshold:.2f} "
            "(domain-aware proposals; start the app without --domain-aware to show them all).")


def propose(svc: Services, state: UserState, user: str) -> EditResult:
    """Ask the model for segments. A new image is seeded with them; an image already being labeled
    gets them as one undoable edit that replaces its segments (e.g. after changing the class set)."""
    image_id = require_image(state)
    ctx = load_context(svc, state)
    choice = ctx.class_set
    if choice is None or choice.id is None:
        raise UserError("Choose a class set first (Class set tab): the model needs to know what to look for.")
    info = svc.model.info(ctx.checkpoint)
    predictor = svc.model.predictor(ctx.checkpoint)
    version_id = model_version_id(svc, ctx, info)
    with svc.sessions() as session:
        image = repo.get_image(session, image_id)
        was_accepted = image.status == ImageStatus.ACCEPTED
    start = time.perf_counter()
    segments, prediction = predict_segments(predictor, svc.images.rgb(image.sha256), choice)
    elapsed_ms = (time.perf_counter() - start) * 1000
    note = domain_note(prediction.domain_probs, prediction.out_of_domain, svc.model.out_of_domain_threshold,
                       choice.label_spaces, info.space_domains)
    rows = [to_storage(s) for s in segments]
    try:
        with svc.sessions.begin() as session:
            # Read again inside the write: someone may have proposed or edited it while the model ran.
            repo.lock_image(session, image_id)
            seeds = repo.get_image(session, image_id).status == ImageStatus.NEW
            repo.save_proposal(session, image_id, version_id, choice.id, rows, elapsed_ms, user,
                               unfamiliar=prediction.unfamiliar)
            if not seeds:  # an edit on top of what is there now; a stale state.version is a Conflict
                current = repo.current_annotation(session, image_id)
                repo.apply_correction(session, image_id, state.version, user,
                                      Correction(EventType.EDIT.value, [s.to_json() for s in current.segments], rows))
    except Conflict as exc:
        return conflict(state, exc)
    if prediction.unfamiliar and segments:  # hidden, not deleted: one slider move shows them
        state = hide_proposals(state)
    new_state, view = load_image(svc, state)
    message = f"Proposed {len(segments)} segment(s) in {elapsed_ms:.0f} ms."
    if prediction.unfamiliar:  # the model's familiarity check: say so before anything else
        message = f"{prediction.notice} {message}"
        if segments:
            message += f" {UNFAMILIAR_HIDDEN}"
    if was_accepted:
        message += " The image was accepted; it is back in review (Undo restores its segments; accept it again when done)."
    return EditResult(new_state, view, f"{message} {note}" if note else message)
