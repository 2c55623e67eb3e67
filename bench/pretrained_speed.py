"""Speed of bring-your-own pretrained models on CPU: WeSpeaker ResNet34 in torch vs ONNX.

A ResNet34 of the public WeSpeaker model's size (80 fbank bins, 32 channels, 256-d) with random
weights is saved in WeSpeaker's layout and exported to ONNX (input ``feats`` (batch, frames,
80), output ``embs``), then embedded through the project's ``pretrained`` and ``onnx``
extractors on the same 3 s windows. Prints seconds of audio per second (median of repeats),
the two extractors' max abs difference, and the Kaldi front-end's agreement with
kaldi-native-fbank. No accuracy figure: the weights are random.

Usage::

    .venv/bin/python bench/pretrained_speed.py [--threads 2] [--windows 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import FeaturesConfig, load_config
from src.features.kaldi_fbank import KaldiFbank
from src.inference.extractors import build_extractor
from src.model_zoo.wespeaker_resnet import WeSpeakerResNet
from tests.fixtures.speech import speech_like

SAMPLE_RATE = 16000


def throughput(extractor, waves: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of audio embedded per wall second, and the embeddings."""
    vectors = extractor.embed(waves[:2])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = extractor.embed(waves)
        times.append(time.perf_counter() - started)
    audio = waves.shape[0] * waves.shape[1] / SAMPLE_RATE
    return audio / statistics.median(times), vectors


def fbank_agreement() -> float | None:
    try:
        import kaldi_native_fbank as knf
    except ImportError:
        return None
    wave = speech_like(5.0, 9)
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.window_type = "hamming"
    options.mel_opts.num_bins = 80
    reference = knf.OnlineFbank(options)
    reference.accept_waveform(SAMPLE_RATE, (wave * 32768).tolist())
    reference.input_finished()
    expected = np.stack([reference.get_frame(i) for i in range(reference.num_frames_ready)])
    cfg = FeaturesConfig(frontend="kaldi_fbank", kaldi={"cmn": False})
    ours = KaldiFbank(cfg, SAMPLE_RATE).eval()(torch.from_numpy(wave)[None])[0].numpy()
    return float(np.abs(ours - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=32, help="3 s windows per batch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    waves = np.stack([speech_like(3.0, s) for s in range(args.windows)])
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        encoder = WeSpeakerResNet(depth=34, feat_dim=80, embed_dim=256).eval()
        weights, onnx_path = Path(folder) / "avg_model.pt", Path(folder) / "resnet34.onnx"
        torch.save(encoder.state_dict(), weights)
        torch.onnx.export(
            encoder,
            (torch.randn(1, 300, 80),),
            str(onnx_path),
            input_names=["feats"],
            output_names=["embs"],
            dynamic_axes={"feats": {0: "batch", 1: "frames"}, "embs": {0: "batch"}},
            dynamo=False,
        )
        common = ["features.frontend=kaldi_fbank", "train.device=cpu", f"paths.outputs={folder}"]
        torch_cfg = load_config(
            None,
            [*common, "extractor.kind=pretrained", "model.architecture=wespeaker_resnet34",
             f"model.weights={weights}"],
        )  # fmt: skip
        onnx_cfg = load_config(
            None,
            [*common, "extractor.kind=onnx", f"extractor.path={onnx_path}",
             f"extractor.threads={args.threads}"],
        )  # fmt: skip
        params = sum(p.numel() for p in encoder.parameters())
        torch_speed, torch_vectors = throughput(build_extractor(torch_cfg, 0), waves, args.repeats)
        onnx_speed, onnx_vectors = throughput(build_extractor(onnx_cfg, 0), waves, args.repeats)
    difference = float(np.abs(torch_vectors - onnx_vectors).max())
    print(f"WeSpeaker ResNet34 layout, {params / 1e6:.2f} M parameters, random weights")
    print(f"{args.windows} windows of 3 s per batch, {args.threads} threads, CPU")
    print("| extractor | s of audio / s |\n|---|---|")
    print(f"| torch (pretrained) | {torch_speed:.1f} |\n| onnxruntime (onnx) | {onnx_speed:.1f} |")
    print(f"ONNX / torch speed: {onnx_speed / torch_speed:.2f}x")
    print(f"max abs difference of the unit embeddings, torch vs onnx: {difference:.2e}")
    agreement = fbank_agreement()
    if agreement is not None:
        print(f"Kaldi fbank vs kaldi-native-fbank, 5 s, 80 bins: max abs diff {agreement:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
