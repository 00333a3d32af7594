"""The kit's machinery under every method: paths, atomic files and caches, input checks, progress, devices and
precision, data parallelism, the shared training loop and training cost. Imports nothing else of the kit."""
