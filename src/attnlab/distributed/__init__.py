"""Scaling out on torch.distributed: the process group of a run launched by torchrun
(:mod:`~attnlab.distributed.world`), parallelism plans applied from outside the models
(:mod:`~attnlab.distributed.parallelize`: DDP, FSDP2, tensor and context parallel) and sharded
checkpoints (:mod:`~attnlab.distributed.checkpoint`)."""
