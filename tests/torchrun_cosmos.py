"""`cosmos ARGS` as torchrun starts it (``cosmos_cli.app.main``), with two test hooks set by environment variables.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/torchrun_cosmos.py generate ... --num-gpus 2

* ``COSMOS_TEST_SPY=FOLDER``: every rank that decodes a video saves the latent and the frames it decoded to
  ``FOLDER/decoded-rank<R>-<n>.pt`` (the mp4 itself is compressed: this is what the tests compare numerically);
* ``COSMOS_TEST_WRITES=FOLDER``: every rank that writes a video through :func:`cosmos_cli.media.write_video` (any
  backend's pipeline does) saves the frames it hands over to ``FOLDER/written-rank<R>-<n>.npy`` (the conformance
  battery compares them, tests/conformance.py);
* ``COSMOS_TEST_DIE_RANK=R``: rank R's process ends (``os._exit(17)``) in the network's second block, mid-denoising.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RANK = int(os.environ.get("RANK", "0"))


def _spy(folder: Path) -> None:
    import torch

    from cosmos_plugins.predict1.pipeline import Predict1Pipeline

    real, count = Predict1Pipeline.decode, [0]

    def decode(self, latent):
        frames = real(self, latent)
        torch.save({"latent": latent.float().clone(), "frames": frames.copy()},
                   folder / f"decoded-rank{RANK}-{count[0]}.pt")
        count[0] += 1
        return frames

    Predict1Pipeline.decode = decode


def _catch_writes(folder: Path) -> None:
    import numpy as np

    import cosmos_cli.media as media

    real, count = media.write_video, [0]

    def write_video(path, frames, *args, **kwargs):
        frames = frames if isinstance(frames, np.ndarray) else np.stack(list(frames))
        np.save(folder / f"written-rank{RANK}-{count[0]}.npy", frames)
        count[0] += 1
        return real(path, frames, *args, **kwargs)

    media.write_video = write_video


def _die_in_the_network() -> None:
    from cosmos_plugins.predict1 import checkpoint

    real = checkpoint.load_network  # Predict1Pipeline.load imports it from the module at call time

    def load_network(*args, **kwargs):
        net = real(*args, **kwargs)
        list(net.blocks.values())[1].register_forward_pre_hook(lambda module, args: os._exit(17))
        return net

    checkpoint.load_network = load_network


if __name__ == "__main__":
    if os.environ.get("COSMOS_TEST_SPY"):
        _spy(Path(os.environ["COSMOS_TEST_SPY"]))
    if os.environ.get("COSMOS_TEST_WRITES"):
        _catch_writes(Path(os.environ["COSMOS_TEST_WRITES"]))
    if os.environ.get("COSMOS_TEST_DIE_RANK") == str(RANK):
        _die_in_the_network()
    from cosmos_cli.app import main

    main(sys.argv[1:])
