"""What each training step trains, freezes and feeds to Eq. 6 as s_i.

Step 1: s_i = 1; backbone + classifier learn (or only the classifier on a pretrained backbone).
Step 2: backbone and classifier frozen (eval mode, no gradients, not in the optimizer); only the quality branch learns,
        through s_i in Eq. 6.
Step 3: the quality branch is frozen; s_i comes from the frozen Step-2 network — precomputed once per sample on the
        un-augmented image (the paper's "a face quality is generated for every sample"), or online for each augmented
        view by a frozen copy (``teacher``), or 1 for an unweighted control run — and the backbone + classifier
        learn. QWDF: samples with s_i < threshold leave the batch before the forward pass, so neither BatchNorm's
        statistics nor the loss mean see them; a batch that would keep fewer than two samples (BatchNorm needs two)
        keeps them all with s_i = 0 for the dropped ones, which zeroes their gradient in Eq. 6.
        ``head_only``: the feature extractor stays frozen (eval mode, no gradients); only the embedding head
        (``Backbone.head``) and the classifier learn.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn

from eqface.losses import CombinedMarginLoss, NormalizedClassifier, PartialFC
from eqface.models import EQFaceNet
from eqface.train.precision import full_precision

MIN_KEPT = 2  # BatchNorm in training mode needs two samples


class Step(enum.Enum):
    ONE = "step1"
    TWO = "step2"
    THREE = "step3"


@dataclass
class StepOutput:
    loss: torch.Tensor
    correct: torch.Tensor  # number of samples whose arg-max class is the label
    quality: torch.Tensor | None  # s_i used in Eq. 6 (None in Step 1)
    samples: int  # samples in the loss (fewer than the batch when QWDF drops some)


def set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class StepModel(nn.Module):
    """Network + classifier + loss for one step; ``forward`` returns the loss and statistics of a batch."""

    def __init__(
        self,
        step: Step,
        net: EQFaceNet,
        classifier: NormalizedClassifier | PartialFC,
        loss: CombinedMarginLoss,
        train_backbone: bool = True,
        teacher: EQFaceNet | None = None,
        qwdf_threshold: float = 0.0,
        head_only: bool = False,
    ) -> None:
        super().__init__()
        self.step, self.net, self.classifier, self.loss = step, net, classifier, loss
        self.teacher, self.qwdf_threshold = teacher, qwdf_threshold
        self.train_backbone = train_backbone and step is not Step.TWO
        self.head_only = self.train_backbone and head_only
        set_trainable(net.backbone, self.train_backbone and not self.head_only)
        for module in net.backbone.head() if self.head_only else ():
            set_trainable(module, True)
        set_trainable(net.quality, step is Step.TWO)
        set_trainable(classifier, step is not Step.TWO)
        if teacher is not None:
            set_trainable(teacher, False)
            teacher.eval()

    def train(self, mode: bool = True) -> StepModel:
        super().train(mode)
        # Frozen parts stay in eval mode so their BatchNorm statistics do not move either.
        self.net.backbone.train(mode and self.train_backbone and not self.head_only)
        for module in self.net.backbone.head() if self.head_only else ():
            module.train(mode)
        self.net.quality.train(mode and self.step is Step.TWO)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, sample_quality: torch.Tensor | None = None
    ) -> StepOutput:
        if self.step is Step.TWO:
            with torch.no_grad():
                embedding, fmap = self.net.embed_and_map(images)
            quality = self.net.quality(fmap).squeeze(1)
        else:
            quality = None
            if self.step is Step.THREE:
                images, labels, quality = self._qwdf(images, labels, self._step3_quality(images, sample_quality))
            embedding = self._embed(images)
        loss, correct = self._eq6(embedding, labels, quality)
        return StepOutput(loss, correct, None if quality is None else quality.detach(), labels.numel())

    def _eq6(
        self, embedding: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the number of correct arg-max classes, with the full or the sharded (Partial FC) centres, in
        fp32 also when the backbone ran under bf16/fp16 autocast: the margin cos(θ + m2) needs sin θ = sqrt(1 − cos² θ)
        from an accurate cos θ near 1, and the softmax over s_i·S-scaled logits fp32's sums
        (``eqface.train.precision``). The embedding is cast up before the classifier's cosines (Partial FC computes in
        fp32 itself). Step 2: no graph (frozen classifier, embedding computed without grad)."""
        if isinstance(self.classifier, PartialFC):
            out = self.classifier(embedding, labels, quality)
            return out.loss, out.correct
        with full_precision(embedding.device.type):
            cos = self.classifier(embedding.float())
            loss = self.loss(cos, labels, None if quality is None else quality.float())
        return loss, (cos.argmax(dim=1) == labels).sum()

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        if not self.head_only:
            with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
                return self.net.embed_and_map(images)[0]
        with torch.no_grad():
            fmap = self.net.backbone.forward_features(images)
        return self.net.backbone.forward_head(fmap)

    def _step3_quality(self, images: torch.Tensor, sample_quality: torch.Tensor | None) -> torch.Tensor:
        if sample_quality is None:
            if self.teacher is None:  # step3_quality="none": unweighted retraining (s_i = 1)
                return torch.ones(images.shape[0], device=images.device)
            with torch.no_grad():
                sample_quality = self.teacher(images)[1].squeeze(1)
        return sample_quality.detach()

    def _qwdf(
        self, images: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """QWDF: only the samples with s_i >= threshold go on (see the module docstring for the small-batch rule)."""
        if self.qwdf_threshold <= 0:
            return images, labels, quality
        keep = quality >= self.qwdf_threshold
        if int(keep.sum()) >= MIN_KEPT:
            return images[keep], labels[keep], quality[keep]
        return images, labels, torch.where(keep, quality, torch.zeros_like(quality))


def control_weights(quality: torch.Tensor, mode: str, seed: int) -> torch.Tensor:
    """Step 3's per-sample s_i for ``train.step3_quality``, from the precomputed Step-2 qualities.

    "precomputed": as they are. E2's controls keep what QW changes besides *which* samples weigh more: "mean" gives
    every sample the mean s (the same average logit scale s·S and gradient size, no per-sample information);
    "shuffled" permutes the s_i across samples (the same distribution of weights, attached to the wrong faces).
    """
    if mode == "precomputed":
        return quality
    if mode == "mean":
        return torch.full_like(quality, float(quality.mean()))
    if mode == "shuffled":
        generator = torch.Generator().manual_seed(seed)
        return quality[torch.randperm(quality.numel(), generator=generator)]
    raise ValueError(f"no precomputed Step-3 weights for step3_quality={mode!r}")
