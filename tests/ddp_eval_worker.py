"""Run under torchrun by tests/test_distributed.py: sharded evaluation must score every image once.

Usage: torchrun --nproc_per_node=2 tests/ddp_eval_worker.py RUN_DIR CACHE SPLIT OUT.npz
"""

import sys

import numpy as np
import torch

from chexvision_lib.data.batches import BatchLoader, CachedSplit
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_loader
from chexvision_lib.runtime import distributed

run, cache, split, out = sys.argv[1:5]
state = distributed.setup("cpu")
data = CachedSplit(cache, split)
loader = BatchLoader(
    data, 4, state.device, shuffle=False, rank=state.rank, world_size=state.world_size
)
model = load_model(run)
probs, _ = predict_loader(model, loader, model.preprocessing, None, show_progress=False)
# The raw gathered positions, to count how often each image was scored before de-duplication.
mine = torch.cat([index for _, _, index in loader])
positions = distributed.gather(mine).numpy()
if state.is_main:
    np.savez(out, probs=probs, positions=positions, n=len(data))
distributed.cleanup(state)
