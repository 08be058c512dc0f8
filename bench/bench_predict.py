"""Per-pair prediction latency: network-only and end to end, at the Learn2Reg 2020 settings.

* task 3: 192x160x256 CT pair, half resolution (network input 96x80x128), start_channel 28,
  field written at 192x160x256;
* task 4: 64x64x64 MR pair, full resolution, start_channel 7.

End to end = ``pipeline.prediction.predict.predict_pair`` (read both NIfTI files, preprocess, forward,
resample the field to full resolution, write it in the challenge format) with randomly
initialised weights (timing does not depend on them). Network-only = the forward pass with
GPU synchronisation. Medians over repeats after a warm-up; results to bench/results/.

    python bench/bench_predict.py [--device cpu|cuda] [--repeats 3] [--amp none|bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learn2reg import dataset  # noqa: E402
from learn2reg.io import Geometry, save_nifti  # noqa: E402
from learn2reg.task import load_task  # noqa: E402
from pipeline.config import config_from_dict  # noqa: E402
from pipeline.model.lapirn import LapIRN, LapIRNConfig  # noqa: E402
from pipeline.prediction.predict import predict_pair  # noqa: E402
from pipeline.prediction.predictor import Predictor  # noqa: E402

SETTINGS = {
    "task3": {"shape": (192, 160, 256), "half": True, "start_channel": 28, "window": [-500, 800]},
    "task4": {"shape": (64, 64, 64), "half": False, "start_channel": 7, "window": None},
}


def make_task(root: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """A two-image inter-patient task with smooth random images."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    entries = []
    for s in (1, 2):
        img = ndimage.gaussian_filter(rng.normal(0, 300, shape).astype(np.float32), 4) * 10
        stem = f"Bench_{s:04d}_0000"
        save_nifti(root / "imagesTr" / f"{stem}.nii.gz", img, Geometry.identity(shape))
        entries.append({"image": f"./imagesTr/{stem}.nii.gz"})
    dataset.write_description(root, dataset.build_description(
        "Bench", shape, entries, [{"fixed": entries[0]["image"], "moving": entries[1]["image"]}]))
    return root


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.processor() or "cpu"


def bench_setting(name: str, device: torch.device, repeats: int, amp: str) -> dict:
    s = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        task = load_task(make_task(Path(tmp) / "task", s["shape"]))
        cfg = config_from_dict({"preprocess": {"half_resolution": s["half"], "window": s["window"]},
                                "model": {"start_channel": s["start_channel"]}, "predict": {"amp": amp}})
        model = LapIRN(LapIRNConfig(start_channel=s["start_channel"])).to(device).eval()
        p = Predictor(task, cfg, model, device, "random-weights", "bench")
        pair = task.pairs["val"][0]
        out = Path(tmp) / "out"
        predict_pair(p, pair, out)  # warm-up
        runs = [predict_pair(p, pair, out) for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "setting": name, "image_shape": list(s["shape"]), "half_resolution": s["half"],
        "start_channel": s["start_channel"], "amp": amp if device.type == "cuda" else "none",
        "network_s_median": statistics.median(r["network_s"] for r in runs),
        "total_s_median": statistics.median(r["total_s"] for r in runs),
        "repeats": repeats, "cuda_peak_mb": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--settings", default="task4,task3")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [bench_setting(n, device, args.repeats, args.amp) for n in args.settings.split(",")]
    result = {"device": device_name(device), "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M"),
              "load_average": list(__import__("os").getloadavg()), "rows": rows}
    stem = f"predict_{device.type}" + ("" if args.amp == "none" or device.type != "cuda" else f"_{args.amp}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Prediction latency ({result['device']})", "", f"torch {result['torch']}, {result['time']}, "
             f"load average {result['load_average']}. Medians over {args.repeats} repeats after a warm-up.", "",
             "| setting | image | network input | start_channel | network s | end to end s |", "|---|---|---|---|---|---|"]
    for r in rows:
        net = [n // 2 if r["half_resolution"] else n for n in r["image_shape"]]
        lines.append(f"| {r['setting']} | {'x'.join(map(str, r['image_shape']))} | {'x'.join(map(str, net))} | "
                     f"{r['start_channel']} | {r['network_s_median']:.2f} | {r['total_s_median']:.2f} |")
    lines += ["", "Seed paper (RTX 2080 Ti): 1.83 s (task 3), 1.00 s (task 4) per pair."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
