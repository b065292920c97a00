"""Forward images/s of our DETR vs Hugging Face's DetrForObjectDetection, identical weights.

Both models come from one randomly initialised Hugging Face model (nothing is downloaded),
so weights and inputs are identical; the outputs are compared before timing. Ours runs as
the detection pipeline runs it: optimize_for_inference (frozen BN folded into the
convolutions, channels-last), inference mode, scaled_dot_product_attention.

    python -m bench.forward_vs_huggingface [--threads 2] [--repeats 5] [--device cpu] [--small]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from bench.hf_weights import randomize_vectors
from model.checkpoint import load_checkpoint
from model.inference import optimize_for_inference

CASES = [  # (name, HF config, batch, height, width); r18-small: the reference structure at detr-tiny's sizes
    ("r18-small", dict(backbone="resnet18", d_model=128, encoder_attention_heads=8, decoder_attention_heads=8,
                       encoder_layers=2, decoder_layers=2, encoder_ffn_dim=512, decoder_ffn_dim=512,
                       num_queries=20), 1, 256, 256),
    ("r18-small", None, 8, 256, 256),
    ("detr-r50", dict(backbone="resnet50"), 1, 800, 1066),
]


def build_pair(hf_kwargs: dict, device: str):
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    hf_config = DetrConfig(use_timm_backbone=True, use_pretrained_backbone=False, dropout=0.0, **hf_kwargs)
    hf_model = DetrForObjectDetection(hf_config).eval()
    randomize_vectors(hf_model)
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        ours, _ = load_checkpoint(folder)
    return optimize_for_inference(ours.to(device)), hf_model.to(device)


def images_per_second(fn, batch: int, repeats: int, device: str) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]  # median


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per case")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="the first case alone (seconds on a CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = []
    pair = None
    for name, hf_kwargs, batch, height, width in CASES[:1] if args.small else CASES:
        if hf_kwargs is not None:
            pair = build_pair(hf_kwargs, args.device)
        ours, theirs = pair
        torch.manual_seed(1)
        images = torch.randn(batch, 3, height, width, device=args.device)
        mask = torch.zeros(batch, height, width, dtype=torch.bool, device=args.device)
        with torch.inference_mode():
            out_ours = ours(images, mask)
            out_theirs = theirs(pixel_values=images, pixel_mask=(~mask).long())
            max_diff = max(
                (out_ours["pred_logits"] - out_theirs.logits).abs().max().item(),
                (out_ours["pred_boxes"] - out_theirs.pred_boxes).abs().max().item(),
            )
            ours_ips = images_per_second(lambda: ours(images, mask), batch, args.repeats, args.device)
            theirs_ips = images_per_second(
                lambda: theirs(pixel_values=images, pixel_mask=(~mask).long()), batch, args.repeats, args.device
            )
        row = {
            "case": f"{name} batch {batch} {height}x{width}",
            "ours_images_per_s": round(ours_ips, 3),
            "hf_images_per_s": round(theirs_ips, 3),
            "ratio": round(ours_ips / theirs_ips, 3),
            "max_abs_output_diff": max_diff,
        }
        results.append(row)
        print(f"{row['case']:32s} ours {ours_ips:8.2f} img/s  HF {theirs_ips:8.2f} img/s  "
              f"ratio {row['ratio']:.2f}  max|diff| {max_diff:.1e}", flush=True)
    print(json.dumps({"device": args.device, "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
