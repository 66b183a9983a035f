"""PEFT module kinds that a layer plan can place, by name."""

from layerpeft.methods.adapters import ParallelAdapter, SeriesAdapter
from layerpeft.methods.base import AdapterModule, ForwardContext
from layerpeft.methods.dora import DoRA
from layerpeft.methods.full import FullLayer
from layerpeft.methods.ia3 import IA3
from layerpeft.methods.lora import LoRA, LoRAAttn, LoRAFFN
from layerpeft.methods.norm_bias import BitFit, LNTuning
from layerpeft.methods.para import PARA
from layerpeft.methods.prefix import Prefix
from layerpeft.methods.prompt import PromptTuning
from layerpeft.methods.tied_lora import TiedLoRA

MODULE_KINDS: dict[str, type[AdapterModule]] = {
    cls.kind: cls
    for cls in (LoRA, LoRAFFN, LoRAAttn, Prefix, ParallelAdapter, SeriesAdapter, IA3, TiedLoRA, PARA,
                DoRA, LNTuning, BitFit, PromptTuning, FullLayer)
}

__all__ = ["MODULE_KINDS", "AdapterModule", "ForwardContext"]
