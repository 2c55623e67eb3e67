"""Speaker-head initialisation from the starting embedder's class means (weight imprinting).

A pretrained embedder already separates new speakers; a randomly initialised margin head does
not know them, and its first gradients (or a head-only phase, ``train.freeze_epochs``) are spent
finding centres the embedder could give directly. ``train.head_init: class_means`` sets each
speaker's centre to the normalised mean of its training clips' unit embeddings, as in Qi, Brown &
Lowe 2018, "Low-Shot Learning with Imprinted Weights" (CVPR, arXiv:1712.07136), section 3.2.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from src.config import ExperimentConfig
from src.data.cache import AudioCache
from src.inference.embed import embed_clips
from src.inference.extractors import ModuleExtractor
from src.model_zoo.heads import CosineClassifier
from src.training.batches import TrainingSet

log = logging.getLogger(__name__)


def class_means(vectors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Unit mean of each class's unit vectors.

    Shapes: ``(clips, dim)`` unit vectors and ``(clips,)`` labels in ``0..n_classes-1`` ->
    ``(n_classes, dim)``.

    Raises
    ------
    ValueError
        A class with no clip (it would get no centre).

    >>> class_means(np.eye(2), np.array([1, 0]), 2)
    array([[0., 1.],
           [1., 0.]])
    """
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"train.head_init: class {int(np.argmin(counts))} has no training clip")
    sums = np.zeros((n_classes, vectors.shape[1]))
    np.add.at(sums, labels, vectors)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def speaker_classifier(head: torch.nn.Module) -> CosineClassifier:
    """The cosine classifier of a margin head (AAM, sub-centre AAM, cosine softmax).

    Raises
    ------
    ValueError
        A head without cosine centres (``head.kind: softmax`` with plain logits).
    """
    classifier = getattr(head, "classifier", None)
    if not isinstance(classifier, CosineClassifier):
        raise ValueError(
            "train.head_init=class_means needs a head with cosine centres (head.kind aam, "
            "subcenter_aam, or softmax with head.softmax_logits=cosine)"
        )
    return classifier


def imprint_class_means(
    cfg: ExperimentConfig,
    embedder: torch.nn.Module,
    head: torch.nn.Module,
    data: TrainingSet,
    cache: AudioCache,
    device: torch.device,
) -> float:
    """Set ``head``'s speaker centres to the class means of ``data`` under ``embedder``.

    Clips are embedded as the embed stage does (``cfg.embed``), in eval mode; with sub-centres
    every sub-centre of a speaker starts at its mean. Returns the mean cosine of the training
    clips to their own centre (how well the starting embedder already groups these speakers).
    """
    classifier = speaker_classifier(head)
    was_training = embedder.training
    embedder.eval()
    extractor = ModuleExtractor(embedder, device, cfg.model.embedding_dim, "head init")
    with torch.inference_mode():
        vectors, _ = embed_clips(
            extractor, cache, list(data.ids), cfg.embed, cfg.data.sample_rate, False
        )
    embedder.train(was_training)
    centres = class_means(vectors, data.labels, len(data.speakers))  # (speakers, dim)
    repeated = np.repeat(centres, classifier.subcenters, axis=0)  # class-major, as the view
    with torch.no_grad():
        classifier.weight.copy_(torch.as_tensor(repeated, dtype=classifier.weight.dtype))
    fit = float(np.mean(np.sum(vectors * centres[data.labels], axis=1)))
    log.info(
        "train.head_init: %d speaker centres from the class means of %d clips "
        "(mean cosine to own centre %.3f)",
        len(centres),
        len(vectors),
        fit,
    )
    return fit
