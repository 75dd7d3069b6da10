"""Renderers: the programs a worker runs to turn a scene and frames into images."""
