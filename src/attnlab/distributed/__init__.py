"""Scaling out on torch.distributed: the process group of a run launched by torchrun
(:mod:`~attnlab.distributed.world`), parallelism plans applied from outside the models
(:mod:`~attnlab.distributed.parallelize`: DDP, FSDP2, tensor parallel in
:mod:`~attnlab.distributed.tp`, context parallel in :mod:`~attnlab.distributed.cp`), sharded
checkpoints (:mod:`~attnlab.distributed.checkpoint`) and the communication each plan costs
(:mod:`~attnlab.distributed.volume`)."""

from attnlab.distributed.parallelize import PLANS, Parallel, parallelize
from attnlab.distributed.world import SINGLE, World, join, launched, leave

__all__ = ["PLANS", "SINGLE", "Parallel", "World", "join", "launched", "leave", "parallelize"]
