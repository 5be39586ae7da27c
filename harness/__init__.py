"""Running experiments: config, CLI, Ray launcher, training loop, measurement, results."""
