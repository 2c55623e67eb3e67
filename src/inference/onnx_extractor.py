"""Any ONNX speaker model on fbank frames as a frozen, fold-independent extractor.

The model takes a batch of front-end frames ``(batch, frames, bins)`` (input
``extractor.input_name``, WeSpeaker's exports call it ``feats``) and gives one embedding per
utterance ``(batch, dim)`` (``extractor.output_name``, ``embs``). The front-end is this
project's ``features`` section (``frontend: kaldi_fbank`` for WeSpeaker and 3D-Speaker exports),
computed in torch in eval mode (no dither). onnxruntime runs it on CPU, or on CUDA when its GPU
build is installed and a GPU is present.

At load the file must exist, match ``extractor.sha256`` when given, take ``features.n_mels`` bins
and give ``extractor.dim``-d embeddings: each failure says what was expected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from src.config import ExperimentConfig
from src.inference.extractor_base import EmbeddingExtractor
from src.model_zoo.embedder import build_front_end
from src.util.stage_cache import file_digest, fingerprint

log = logging.getLogger(__name__)

ONNX_HINT = (
    "an ONNX speaker model whose input is (batch, frames, bins) fbank frames and whose output is "
    "(batch, dim) embeddings, e.g. a WeSpeaker or 3D-Speaker .onnx export"
)


class OnnxExtractor(EmbeddingExtractor):
    """onnxruntime session + the configured front-end; the same model for every fold."""

    fold_independent = True

    def __init__(self, cfg: ExperimentConfig) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise RuntimeError(
                f"extractor.kind=onnx needs onnxruntime ({err}): .venv/bin/pip install "
                "-r requirements.txt"
            ) from None
        settings = cfg.extractor
        path = settings.path
        if path is None:
            raise ValueError(f"extractor.kind=onnx needs extractor.path: {ONNX_HINT}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"extractor.path {path} does not exist; expected {ONNX_HINT}")
        digest = file_digest(path)
        if settings.sha256 and digest != settings.sha256.lower():
            raise ValueError(
                f"extractor.path {path} has sha256 {digest}, but extractor.sha256 expects "
                f"{settings.sha256}: a different or damaged file"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in onnxruntime.get_available_providers()
        ]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as err:
            raise ValueError(
                f"{path} is not a loadable ONNX model ({err}); expected {ONNX_HINT}"
            ) from None
        self.input_name, self.output_name = settings.input_name, settings.output_name
        self.front_end = build_front_end(cfg.features, cfg.data.sample_rate).eval()
        self.time_first = cfg.features.frontend == "kaldi_fbank"
        self.dim = settings.dim
        self._check_signature(path, cfg.features.n_mels)
        self.fingerprint = fingerprint(
            "onnx", digest, cfg.features.model_dump(mode="json"), self.input_name, self.output_name
        )
        log.info("onnx extractor %s (sha256 %s) on %s", path, digest[:12], providers[0])

    def _check_signature(self, path: Path, n_mels: int) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if self.input_name not in inputs:
            raise ValueError(
                f"{path} has no input {self.input_name!r} (it has {sorted(inputs)}): set "
                "extractor.input_name"
            )
        if self.output_name not in outputs:
            raise ValueError(
                f"{path} has no output {self.output_name!r} (it has {sorted(outputs)}): set "
                "extractor.output_name"
            )
        shape = inputs[self.input_name].shape
        self.one_per_run = shape[0] == 1  # an export with a fixed batch of one
        if len(shape) != 3:
            raise ValueError(
                f"{path} input {self.input_name!r} has shape {shape}; expected (batch, frames, "
                "bins)"
            )
        if isinstance(shape[2], int) and shape[2] != n_mels:
            raise ValueError(
                f"{path} takes {shape[2]} fbank bins, but features.n_mels is {n_mels}: set "
                f"features.n_mels={shape[2]}"
            )
        probe = self._run(np.zeros((1, 16000), dtype=np.float32))  # 1 s of silence
        if probe.ndim != 2 or probe.shape[1] != self.dim:
            raise ValueError(
                f"{path} gives embeddings of shape {tuple(probe.shape[1:])} per clip, but "
                f"extractor.dim is {self.dim}: set extractor.dim to the model's embedding size"
            )

    def _run(self, waves: np.ndarray) -> np.ndarray:
        if self.one_per_run and len(waves) > 1:
            return np.concatenate([self._run(wave[None]) for wave in waves])
        with torch.inference_mode():
            frames = self.front_end(torch.from_numpy(np.ascontiguousarray(waves, np.float32)))
        if not self.time_first:
            frames = frames.transpose(1, 2)  # log-mel is (batch, mels, frames)
        feed = {self.input_name: frames.contiguous().numpy()}
        return np.asarray(self.session.run([self.output_name], feed)[0], dtype=np.float32)

    def embed(self, waves: np.ndarray) -> np.ndarray:
        vectors = self._run(waves)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
