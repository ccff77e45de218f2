"""Run by tests/supernets/test_distributed.py under torchrun: a tiny supernet training on 2 processes."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from supernets.training import SupernetTrainer
from tests.supernets.tiny import quiet, tiny_config, tiny_digits


def main(run_dir: str) -> None:
    trainer = SupernetTrainer(tiny_config(), run_dir, data=tiny_digits(), progress=False, log=quiet)
    history = trainer.run()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.net.state_dict().items()):
        if name.endswith(("weight", "bias")):
            digest.update(name.encode() + tensor.numpy().tobytes())
    rank, world = trainer.world.rank, trainer.world.size
    out = Path(run_dir) / f"rank{rank}.json"
    out.write_text(json.dumps({"rank": rank, "world": world, "weights": digest.hexdigest(), "history": history}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
