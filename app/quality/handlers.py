"""Quality: PIQ of the accepted proposals over time and per model version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from app.context import UserState, require_project
from app.services import Services
from storage import repo


@dataclass(frozen=True)
class QualityReport:
    over_time: list[dict[str, Any]]  # {"time", "piq", "model"} per accepted image
    per_model: list[dict[str, Any]]  # {"model", "mean_piq", "images"}
    unchanged_share: float | None  # proposed segments accepted exactly as proposed
    accepted_images: int

    @property
    def summary(self) -> str:
        if not self.over_time:
            return "No PIQ recorded yet: accept a proposed image to see how good the proposals are."
        mean = sum(r["piq"] for r in self.over_time) / len(self.over_time)
        share = "n/a" if self.unchanged_share is None else f"{self.unchanged_share:.0%}"
        return (f"Mean PIQ {mean:.3f} over {len(self.over_time)} accepted image(s); "
                f"{share} of proposed segments were accepted unchanged.")


def quality(svc: Services, state: UserState) -> QualityReport:
    project_id = require_project(state)
    with svc.sessions() as session:
        names = {v.id: v.name for v in repo.list_model_versions(session, project_id)}
        records = repo.accepted_image_piq(session, project_id)
        accepted = repo.accepted_annotations(session, project_id)
        proposals = {a.image_id: repo.latest_proposal(session, a.image_id) for a in accepted}
    over_time = [{"time": r.created_at, "piq": r.piq, "model": names.get(r.model_version_id, "unknown")}
                 for r in records]
    per_model: dict[str, list[float]] = {}
    for row in over_time:
        per_model.setdefault(row["model"], []).append(row["piq"])
    proposed = kept = 0
    for item in accepted:
        proposal = proposals[item.image_id]
        if proposal is None:
            continue
        final = {s.id: s for s in item.segments}
        for seg in repo.proposal_segments(proposal):
            proposed += 1
            kept += final.get(seg.id) == seg
    return QualityReport(
        over_time=over_time,
        per_model=[{"model": m, "mean_piq": sum(v) / len(v), "images": len(v)} for m, v in per_model.items()],
        unchanged_share=kept / proposed if proposed else None,
        accepted_images=len(accepted),
    )


def quality_frames(report: QualityReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The plots' data: PIQ per accepted image over time, and mean PIQ per model version."""
    over_time = pd.DataFrame(report.over_time, columns=["time", "piq", "model"])
    if not over_time.empty:
        over_time["time"] = pd.to_datetime(over_time["time"], utc=True)
    per_model = pd.DataFrame(report.per_model, columns=["model", "mean_piq", "images"])
    return over_time, per_model
