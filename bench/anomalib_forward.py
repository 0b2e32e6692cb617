"""anomalib 2.7 PatchCore's bare model forward on one bottle picture, for bench/bench_serving.py's comparison.

Runs INSIDE the side venv (.venv-anomalib, made by bench/compare_anomalib.py); imports nothing from this repository.
The model is what a new user builds (Patchcore(backbone=<torchvision mobilenet_v2>, layers features.6 / 13,
default pre-processor: 256 x 256, ImageNet normalisation); its memory bank is `--bank` random vectors of the
embedding's dimension (the 1 % bottle bank holds 2,140): the forward's cost (backbone, pooling, nearest-neighbour
search with torch.cdist, re-weighting, anomaly map) does not depend on the values, and fitting a real bank costs
anomalib minutes of coreset. Prints one JSON line: median ms of the model forward on a pre-processed (1, 3, 256,
256) tensor, and of file -> PIL -> pre-processor -> forward.

    .venv-anomalib/bin/python bench/anomalib_forward.py --image ../shared/data/mvtec_ad/bottle/test/good/000.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--bank", type=int, default=2140)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    from anomalib.models import Patchcore
    from anomalib_worker import backbone_module
    from PIL import Image

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Patchcore(backbone=backbone_module(), layers=["features.6", "features.13"], coreset_sampling_ratio=0.01,
                      num_neighbors=9)
    pre = model.pre_processor
    net = model.model

    def load(path: Path) -> torch.Tensor:
        image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        return pre.transform(image)

    x = load(args.image)
    net.train()
    with torch.inference_mode():
        dim = net(x).shape[-1]  # training mode returns the patch embeddings
    net.memory_bank = torch.randn(args.bank, dim)
    net.eval()
    forward, from_file = [], []
    with torch.inference_mode():
        for i in range(args.repeats + 2):
            t0 = time.perf_counter()
            net(x)
            t1 = time.perf_counter()
            net(load(args.image))
            t2 = time.perf_counter()
            if i >= 2:
                forward.append((t1 - t0) * 1e3)
                from_file.append((t2 - t1) * 1e3)
    print(json.dumps({"forward_ms": statistics.median(forward), "from_file_ms": statistics.median(from_file),
                      "bank": args.bank, "dim": int(dim), "threads": args.threads}))


if __name__ == "__main__":
    main()
