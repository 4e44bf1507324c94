"""Pre-training: config schema, optimizer and schedule, the GPA teacher, the train step,
the run loop, checkpoints and metrics. Import the submodules (`mimjax.train.pretrain`, ...)."""
