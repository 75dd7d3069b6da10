"""renderfarm-worker: the farm-worker daemon that renders tasks on a render node."""
