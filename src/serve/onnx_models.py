"""Fold models as ONNX for onnxruntime on CPU: export, check against torch, serve.

Only the part after the front-end is exported (the STFT of the log-mel front-end has no ONNX
form for complex spectra); the front-end still runs in torch, where it costs little. The length
axis (frames) and the batch axis are dynamic, so one file serves any clip length.

Example
-------
>>> diff = export_fold_onnx(extractor.model, Path("fold0/model.onnx"), 16000, 17)  # doctest: +SKIP
>>> OnnxFoldExtractor(extractor, Path("fold0/model.onnx")).embed(waves)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.inference.extractor_base import ModuleExtractor
from src.util.io import write_with

log = logging.getLogger(__name__)

INPUT, OUTPUT = "features", "embedding"
CHECK_SECONDS = (1.3, 3.7)  # clip lengths the export is checked on (other than the traced one)


class AfterFrontEnd(nn.Module):
    """The part of an embedder after its front-end: features in, embedding out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(features)


def can_export(model: nn.Module) -> bool:
    """Whether the embedder splits into a front-end and the rest (timm CNNs, WeSpeaker ResNets;
    not GE2E, whose partial windows depend on the length)."""
    return hasattr(model, "embed_features") and hasattr(model, "frames_axis")


@torch.inference_mode(False)
def export_fold_onnx(model: nn.Module, path: Path, sample_rate: int, opset: int) -> float:
    """Write ``model`` after its front-end to ``path``; returns the largest absolute difference
    from torch's embeddings on clips of :data:`CHECK_SECONDS`."""
    model = model.float().cpu().eval()
    wrapper = AfterFrontEnd(model).eval()
    with torch.no_grad():
        example = model.features(torch.zeros(1, 2 * sample_rate))
    axes = {INPUT: {0: "batch", model.frames_axis: "frames"}, OUTPUT: {0: "batch"}}

    def export(tmp: Path) -> None:
        with warnings.catch_warnings():  # the exporter's notes on traced shapes are expected
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                dynamic_axes=axes, opset_version=opset, dynamo=False,
            )  # fmt: skip

    write_with(path, export)
    model.eval()  # the exporter puts the modules back in their former mode
    return max_difference(model, session_for(path), sample_rate)


def session_for(path: Path, threads: int = 0):
    """An onnxruntime CPU session (``threads`` 0: onnxruntime's default, every core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(model: nn.Module, session, sample_rate: int) -> float:
    """Largest absolute difference between torch and onnxruntime embeddings (batch of 2)."""
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for seconds in CHECK_SECONDS:
        waves = 0.1 * torch.randn(2, int(seconds * sample_rate), generator=generator)
        with torch.no_grad():
            features = model.features(waves)
            expected = model.embed_features(features).numpy()
        got = session.run([OUTPUT], {INPUT: features.numpy()})[0]
        largest = max(largest, float(np.abs(got - expected).max()))
    return largest


class OnnxFoldExtractor(ModuleExtractor):
    """A fold model whose front-end runs in torch and the rest in onnxruntime (CPU)."""

    def __init__(self, torch_extractor: ModuleExtractor, path: Path, threads: int = 0) -> None:
        model = torch_extractor.model.float().cpu().eval()
        super().__init__(
            model, torch.device("cpu"), torch_extractor.dim, torch_extractor.fingerprint + ":onnx"
        )
        self.session = session_for(path, threads)

    def raw(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.features(batch.float().cpu()).numpy()
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: features})[0])

    def embed(self, waves: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32))
        return torch.nn.functional.normalize(self.raw(batch), dim=1).numpy()
