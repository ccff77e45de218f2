"""Weights (torch): static blocks and models built from an architecture (`build_model` -> `StaticNet`), the elastic
once-for-all `Supernet` that holds every subnet of a space, its training (progressive shrinking or the sandwich
rule), datasets, and checkpoints (`load_supernet`, `load_run`)."""

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
