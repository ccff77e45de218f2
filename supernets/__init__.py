"""Weights (torch): static blocks and models built from an architecture (`build_model` -> `StaticNet`), the elastic
once-for-all `Supernet` that holds every subnet of a space, its training (progressive shrinking or the sandwich
rule), datasets, and checkpoints (`load_supernet`, `load_run`).

The names below are imported on first use (PEP 562), so that `import supernets.checkpoint_files` and the other
torch-free modules of this package do not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search_spaces.lazy import lazy_names

if TYPE_CHECKING:
    from supernets.blocks import FusedMBConv, InvertedResidual, ShuffleV2Unit
    from supernets.kinds import BLOCK_KINDS, build_block
    from supernets.layers import ConvBNAct, SqueezeExcite, get_act_layer
    from supernets.models import StaticNet, build_model
    from supernets.supernet import Supernet
    from supernets.training import load_run, load_supernet

__all__ = [
    "BLOCK_KINDS", "ConvBNAct", "FusedMBConv", "InvertedResidual", "ShuffleV2Unit", "SqueezeExcite", "StaticNet",
    "Supernet", "build_block", "build_model", "get_act_layer", "load_run", "load_supernet",
]

#: Exported name -> the module that defines it.
_HOMES = {
    "FusedMBConv": "supernets.blocks", "InvertedResidual": "supernets.blocks", "ShuffleV2Unit": "supernets.blocks",
    "BLOCK_KINDS": "supernets.kinds", "build_block": "supernets.kinds",
    "ConvBNAct": "supernets.layers", "SqueezeExcite": "supernets.layers", "get_act_layer": "supernets.layers",
    "StaticNet": "supernets.models", "build_model": "supernets.models",
    "Supernet": "supernets.supernet",
    "load_run": "supernets.training", "load_supernet": "supernets.training",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _HOMES)
