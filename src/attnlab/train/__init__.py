"""Training: configs and presets (:mod:`~attnlab.train.config`), what each preset trains on
(:mod:`~attnlab.train.tasks`), the loop (:mod:`~attnlab.train.trainer`) and checkpoints that
resume exactly (:mod:`~attnlab.train.checkpoint`)."""
