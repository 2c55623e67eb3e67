"""Training-only classification heads over speaker embeddings, and the margin schedule.

Every head maps ``(embeddings (batch, dim), labels (batch,))`` to a :class:`HeadOutput`, i.e.
``loss, accuracy = head(embeddings, labels)``: the cross-entropy loss and the top-1 accuracy for
logging; ``head.logits(embeddings, labels)`` gives the logits the loss is computed from. Each
head has ``set_margin(m)`` so a training loop can warm the margin up with
:func:`margin_at_epoch`. Accuracy is measured on the margin-free logits, i.e. how nearest-class
decisions would fare without the training margin. All heads compute in float32, also under
autocast.

Example
-------
>>> head = AAMSoftmax(embedding_dim=8, n_classes=4, margin=0.2, scale=30.0)
>>> out = head(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
>>> out.loss.ndim, 0.0 <= float(out.accuracy) <= 1.0
(0, True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from src.config import HeadConfig


class HeadOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    accuracy: torch.Tensor  # scalar in [0, 1], detached


def margin_at_epoch(cfg: HeadConfig, epoch: float) -> float:
    """Margin after ``epoch`` epochs (fractional for per-step use): linear from 0 to ``cfg.margin``
    over ``cfg.margin_warmup_epochs``, then constant.

    >>> margin_at_epoch(HeadConfig(margin=0.2, margin_warmup_epochs=2), 1.0)
    0.1
    """
    if cfg.margin_warmup_epochs <= 0:
        return cfg.margin
    return cfg.margin * min(1.0, max(0.0, epoch) / cfg.margin_warmup_epochs)


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean().detach()


class CosineClassifier(nn.Module):
    """Cosine similarities between embeddings and ``n_classes * subcenters`` learnt centres.

    Shapes: ``(batch, dim)`` -> ``(batch, n_classes)``; with sub-centres the best-matching
    sub-centre of each class counts.
    """

    def __init__(self, embedding_dim: int, n_classes: int, subcenters: int = 1) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.subcenters = subcenters
        self.weight = nn.Parameter(torch.empty(n_classes * subcenters, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))
        if self.subcenters > 1:
            cosine = cosine.view(-1, self.n_classes, self.subcenters)  # (batch, classes, k)
            cosine = cosine.max(dim=-1).values  # (batch, classes)
        return cosine


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace): the target logit is ``s * cos(theta + m)``.

    Where ``theta + m`` would pass pi, ``cos(theta + m)`` stops decreasing monotonically; there
    the target logit is ``s * (cos(theta) - m * sin(m))`` instead (the standard fix), or, with
    ``easy_margin``, the margin is applied only where ``cos(theta) > 0``. At ``m = 0`` the logits
    are exactly ``s * cos(theta)``.

    Parameters
    ----------
    embedding_dim, n_classes : int
        Input width and number of training speakers.
    margin, scale : float
        Angular margin ``m`` (radians) and logit scale ``s``.
    easy_margin : bool
        Apply the margin only to targets with a positive cosine.
    subcenters : int
        Centres per class (sub-centre ArcFace when > 1; see :class:`SubCenterAAM`).
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        easy_margin: bool = False,
        subcenters: int = 1,
    ) -> None:
        super().__init__()
        self.classifier = CosineClassifier(embedding_dim, n_classes, subcenters)
        self.scale = scale
        self.easy_margin = easy_margin
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Change the margin (e.g. during warm-up); takes effect on the next forward."""
        self.margin = float(margin)
        self._cos_m = math.cos(self.margin)
        self._sin_m = math.sin(self.margin)
        self._threshold = math.cos(math.pi - self.margin)  # cos(theta) below: theta + m > pi
        self._fallback = math.sin(math.pi - self.margin) * self.margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = self.classifier(embeddings).clamp(-1.0, 1.0)  # (batch, classes)
            loss = F.cross_entropy(self._with_margin(cosine, labels), labels)
        return HeadOutput(loss, _top1(cosine, labels))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled cosines with the margin on each example's target class, ``(batch, classes)``."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._with_margin(self.classifier(embeddings).clamp(-1.0, 1.0), labels)

    def _with_margin(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # floor keeps sqrt's gradient finite at cos = +-1
        sine = torch.sqrt((1.0 - cosine.square()).clamp(min=1e-7))
        with_margin = cosine * self._cos_m - sine * self._sin_m  # cos(theta + m)
        if self.easy_margin:
            with_margin = torch.where(cosine > 0, with_margin, cosine)
        else:
            with_margin = torch.where(
                cosine > self._threshold, with_margin, cosine - self._fallback
            )
        target = F.one_hot(labels, cosine.shape[-1]).bool()
        return self.scale * torch.where(target, with_margin, cosine)  # (batch, classes)


class SubCenterAAM(AAMSoftmax):
    """Sub-centre ArcFace: ``subcenters`` centres per class, the closest one gives the cosine.

    Noisy or multi-condition speakers can spread over several centres instead of pulling one
    centre apart (Deng et al., 2020).
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        subcenters: int = 3,
        margin: float = 0.2,
        scale: float = 30.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_dim, n_classes, margin, scale, easy_margin, subcenters)


class Softmax(nn.Module):
    """Plain softmax cross-entropy, either over scaled cosines or over a linear layer.

    It has no margin: ``set_margin`` only records the value, so the same training loop drives
    every head.
    """

    def __init__(
        self, embedding_dim: int, n_classes: int, cosine: bool = True, scale: float = 30.0
    ) -> None:
        super().__init__()
        self.cosine = cosine
        self.scale = scale
        if cosine:
            self.classifier: nn.Module = CosineClassifier(embedding_dim, n_classes)
        else:
            self.classifier = nn.Linear(embedding_dim, n_classes)
        self.margin = 0.0

    def set_margin(self, margin: float) -> None:
        self.margin = float(margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        logits = self.logits(embeddings, labels)  # (batch, classes)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            loss = F.cross_entropy(logits, labels)
        return HeadOutput(loss, _top1(logits, labels))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(batch, classes)``; ``labels`` is unused (no margin)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.classifier(embeddings.float())
            return self.scale * logits if self.cosine else logits


Head = AAMSoftmax | Softmax


def build_head(cfg: HeadConfig, embedding_dim: int, n_classes: int) -> Head:
    """The speaker-classification head named by ``cfg.kind``, at the full ``cfg.margin``.

    A training loop with margin warm-up calls ``head.set_margin(margin_at_epoch(cfg, epoch))``.
    """
    if cfg.kind == "aam":
        return AAMSoftmax(embedding_dim, n_classes, cfg.margin, cfg.scale, cfg.easy_margin)
    if cfg.kind == "subcenter_aam":
        return SubCenterAAM(
            embedding_dim, n_classes, cfg.subcenters, cfg.margin, cfg.scale, cfg.easy_margin
        )
    return Softmax(embedding_dim, n_classes, cfg.softmax_logits == "cosine", cfg.scale)


class GenderHead(nn.Module):
    """Auxiliary gender classifier on the embedding: ``nn.Linear(embedding_dim, 2)``.

    Labels are 0/1; ``-1`` (unknown gender) is ignored. Its loss is weighted by
    ``HeadConfig.gender_weight`` in the training loop.

    Shapes: ``(batch, embedding_dim)``, ``(batch,)`` -> scalar loss and accuracy.
    """

    ignore_index = -1

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, 2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            logits = self.linear(embeddings.float())  # (batch, 2)
            known = (labels != self.ignore_index).float()
            per_example = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            count = known.sum().clamp(min=1.0)
            loss = (per_example * known).sum() / count
        correct = (logits.argmax(dim=-1) == labels).float() * known
        return HeadOutput(loss, (correct.sum() / count).detach())


def build_gender_head(cfg: HeadConfig, embedding_dim: int) -> GenderHead | None:
    """A :class:`GenderHead` when ``cfg.gender_weight > 0``, else None."""
    return GenderHead(embedding_dim) if cfg.gender_weight > 0 else None
