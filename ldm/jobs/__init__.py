"""Many generations: a list of jobs (a prompt file's lines), split over one or many processes (torchrun,
accelerate launch), each image named by its job, a manifest of the run, and resuming a run that stopped."""
