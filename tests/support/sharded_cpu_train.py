"""Train with FSDP or DeepSpeed ZeRO-3 on CPU processes over gloo; run from test_distributed.py.

    accelerate launch --config_file examples/configs/fsdp.yaml --num_processes 2 \\
        --mixed_precision no tests/train/sharded_cpu_train.py CONFIG.yaml PROBE.pt

accelerate turns FSDP and DeepSpeed on only for accelerators (GPU, XPU, ...); on CPU it
quietly runs plain data parallel instead. PyTorch's FSDP2 and DeepSpeed's CPU accelerator
both run over gloo, so this script lifts that one gate and then trains through chatforge's
``train``: the Trainer's FSDP2 or ZeRO-3 preparation, the checkpoints and the final save
are the code a GPU run takes.

When training ends, before the final save, the processes run the trained (sharded) model on
fixed token ids together, and the main process writes to PROBE the logits and how many
parameters were sharded, for the test to compare with what was saved.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from chatforge.train.config import load_config
from chatforge.train.trainer import train

PROBE_IDS = list(range(3, 35))  # fixed input; the test feeds the same ids to the saved adapter


def allow_sharding_on_cpu() -> None:
    """Let accelerate keep the FSDP or DeepSpeed plugin when its processes run on CPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def init_sharded(
        self: Any, *args: Any, fsdp_plugin: Any = None, deepspeed_plugin: Any = None, **kw: Any
    ) -> None:
        init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kw)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
        elif deepspeed_plugin is not None:  # what accelerate does for DeepSpeed on a GPU
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
        else:
            return
        # Later AcceleratorState() calls copy the type from here (accelerate sets it so too).
        PartialState._shared_state["distributed_type"] = self.distributed_type

    AcceleratorState.__init__ = init_sharded


class TrainedLogits(TrainerCallback):
    """Writes the trained model's logits on :data:`PROBE_IDS`, and how many of its
    parameters no process holds in full once the probe is done, to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        model.eval()
        with torch.no_grad(), _gathered(model):  # every process takes part in gathering the weights
            logits = model(input_ids=torch.tensor([PROBE_IDS])).logits
        model.train()
        _reshard(model)
        params = list(model.parameters())
        sharded = sum(held < full for held, full in map(_held, params))
        if state.is_world_process_zero:
            torch.save({"logits": logits, "params": len(params), "sharded": sharded}, self.path)


def _gathered(model: Any) -> AbstractContextManager[Any]:
    """ZeRO-3 may keep weights gathered after a forward pass outside training: gather them
    for the probe explicitly, so that they are partitioned again afterwards, as training
    left them for the final save."""
    params = list(model.parameters())
    if not any(hasattr(p, "ds_numel") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _reshard(model: Any) -> None:
    """FSDP2 keeps the root module's weights gathered after a forward pass: shard them again."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _held(param: torch.Tensor) -> tuple[int, int]:
    """``(elements this process holds in the parameter, elements of the whole parameter)``."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):  # FSDP2: the local shard
        return param.to_local().numel(), param.numel()
    if hasattr(param, "ds_numel"):  # ZeRO-3: empty outside forward/backward, the shard is ds_tensor
        return param.numel(), param.ds_numel
    return param.numel(), param.numel()


def main(config_path: str, probe_path: str) -> None:
    allow_sharding_on_cpu()
    result = train(load_config(config_path), callbacks=[TrainedLogits(Path(probe_path))])
    print(f"done: {result.global_step} steps; result in {result.final_dir}")
    # Left to exit with the process group up, one DeepSpeed run in eight aborted at exit
    # ("terminate called without an active exception") after writing everything.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
