"""Run the rlhfctl CLI under accelerate's FSDP (version 2) on CPU ranks. For tests only.

accelerate turns its FSDP plugin on only where there is an accelerator: on CPU
ranks (``ACCELERATE_USE_CPU=true``) it prepares models with DDP over gloo
instead. torch's FSDP2 (``fully_shard``) itself runs on CPUs over gloo, so
this wrapper points each new ``Accelerator``'s state at FSDP, then runs
``rlhfctl`` with its own arguments. The plugin is the one an accelerate config
file gives (``--config_file examples/accelerate/fsdp.yaml``), or else version 2
with one unit per decoder layer (read from the model's ``_no_split_modules``)
and full state dicts; ``FSDP_ON_CPU_VERSION=1`` asks for version 1, to test
what refuses it::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/fsdp_on_cpu.py train-sft ...
    ACCELERATE_USE_CPU=true accelerate launch --config_file examples/accelerate/fsdp.yaml --num_processes 2 \
        tests/fsdp_on_cpu.py train-sft ...

Everything after the plugin is the code path a GPU run under
``examples/accelerate/fsdp.yaml`` takes, bar the device.
"""

from __future__ import annotations

import os

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_plain_init = accelerate.Accelerator.__init__


def _plugin() -> FullyShardedDataParallelPlugin:
    """The plugin `accelerate launch --config_file` would give (FSDP_* in the environment), or the default below."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return FullyShardedDataParallelPlugin()  # reads FSDP_VERSION, FSDP_AUTO_WRAP_POLICY, ... set by the launcher
    version = int(os.environ.get("FSDP_ON_CPU_VERSION", "2"))
    return FullyShardedDataParallelPlugin(
        fsdp_version=version, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
        reshard_after_forward=True if version == 2 else "FULL_SHARD",
    )


def _init_under_fsdp(self, *args, **kwargs):
    _plain_init(self, *args, **kwargs)
    if self.state.distributed_type != DistributedType.MULTI_CPU:
        raise SystemExit("fsdp_on_cpu.py: run it with ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N")
    plugin = _plugin()
    if self.state.mixed_precision != "no":  # what accelerate's state does with a plugin under FSDP
        plugin.set_mixed_precision(self.state.mixed_precision)
    self.state.fsdp_plugin = plugin
    self.state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP


accelerate.Accelerator.__init__ = _init_under_fsdp

if __name__ == "__main__":
    from rlhfctl.cli import main

    main()
