"""Set loss of RESI (SPEC §3): Hungarian matching + class CE + point-sampled mask BCE and dice.

Built from transformers' Mask2FormerHungarianMatcher / Mask2FormerLoss pieces, one loss per label
space (its no-object index is that space's K). Each sample is classified over its own space's
classes + no-object, so classes of other label spaces are never negatives (negatives="own_space").
Weights are applied here: transformers applies them only in its own forward.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from resi_core.model.resi import DecoderOutput, RESIModel

UNION = "union"


@dataclass
class Target:
    """Ground truth of one image in its own label space."""

    space: str
    masks: Tensor  # [N, H, W] {0, 1}, at input resolution; never overlapping within a space
    labels: Tensor  # [N] int64 class indices within `space`


@dataclass
class LossOutput:
    total: Tensor  # scalar: weighted sum over all decoder steps
    parts: dict[str, Tensor]  # unweighted "ce", "mask", "dice" of the last step (detached), for logs


class RESICriterion(nn.Module):
    def __init__(self, model: RESIModel):
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

        super().__init__()
        config = model.config
        self.config = config
        self.weights = {"ce": config.class_weight, "mask": config.mask_weight, "dice": config.dice_weight}
        base = copy.deepcopy(model.mask2former.config)
        for key in ("train_num_points", "no_object_weight", "class_weight", "mask_weight", "dice_weight"):
            setattr(base, key, getattr(config, key))
        sizes = {UNION: len(model.union_names)} if config.negatives == "all_spaces" else {
            name: len(space.classes) for name, space in model.label_spaces.items()
        }
        self.keys = {name: f"s{i}" for i, name in enumerate(sizes)}  # space names may hold dots
        losses = {}
        for name, num_labels in sizes.items():
            base.num_labels = num_labels  # read once, in Mask2FormerLoss.__init__
            losses[self.keys[name]] = Mask2FormerLoss(base, weight_dict={})
        self.losses = nn.ModuleDict(losses)

    def _num_masks(self, targets: Sequence[Target], device: torch.device) -> Tensor:
        """Average number of target masks per process (at least 1), shared across DDP ranks."""
        num = torch.tensor(float(sum(len(t.labels) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num)
            num = num / dist.get_world_size()
        return num.clamp(min=1.0)

    def forward(self, model: RESIModel, output: DecoderOutput, targets: Sequence[Target]) -> LossOutput:
        # float32 from here on: the matcher hands its cost matrix to scipy, which has no bfloat16.
        hidden = output.hidden_states.float()  # [L+1, B, Q, D]
        masks = output.masks_queries_logits.float()  # [L+1, B, Q, h, w]
        batch = hidden.shape[1]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}.")
        num_masks = self._num_masks(targets, hidden.device)
        groups: dict[str, list[int]] = {}
        for b, target in enumerate(targets):
            groups.setdefault(UNION if self.config.negatives == "all_spaces" else target.space, []).append(b)

        total = hidden.new_zeros(())
        last: dict[str, Tensor] = {}
        for step in range(hidden.shape[0]):
            parts = {key: hidden.new_zeros(()) for key in self.weights}
            for group, idx in groups.items():
                loss = self.losses[self.keys[group]]
                if group == UNION:
                    logits = model.union_logits(hidden[step, idx]).float()  # [b, Q, U+1]
                    labels = [self._union_labels(model, targets[b]) for b in idx]
                else:
                    logits = model.space_logits(hidden[step, idx], group).float()  # [b, Q, K+1]
                    labels = [targets[b].labels.to(hidden.device) for b in idx]
                mask_labels = [targets[b].masks.to(masks) for b in idx]  # b x [N, H, W]
                step_masks = masks[step, idx]  # [b, Q, h, w]
                matches = loss.matcher(step_masks, logits, mask_labels, labels)
                # CE is a mean over this group's queries; weight it by the group's share of the batch.
                parts["ce"] = parts["ce"] + loss.loss_labels(logits, labels, matches)["loss_cross_entropy"] * (
                    len(idx) / batch
                )
                if sum(len(j) for _, j in matches) > 0:
                    mask_losses = loss.loss_masks(step_masks, mask_labels, matches, num_masks)
                    parts["mask"] = parts["mask"] + mask_losses["loss_mask"]
                    parts["dice"] = parts["dice"] + mask_losses["loss_dice"]
                else:  # no targets: keep the mask head in the graph so every rank has the same graph
                    parts["mask"] = parts["mask"] + 0.0 * step_masks.sum()
            total = total + sum(self.weights[key] * value for key, value in parts.items())
            last = {key: value.detach() for key, value in parts.items()}
        return LossOutput(total=total, parts=last)

    @staticmethod
    def _union_labels(model: RESIModel, target: Target) -> Tensor:
        columns = torch.tensor(model.space_columns[target.space], dtype=torch.int64)
        return columns[target.labels.cpu()].to(target.labels.device)
