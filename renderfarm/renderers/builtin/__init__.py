"""The builtin renderer: a deterministic numpy ray tracer for renderfarm's own TOML/JSON scenes.

`load_scene` needs only the standard library; `render_region` imports numpy when first used,
so importing this package stays fast for the CLI.
"""

from __future__ import annotations

from typing import Any

from renderfarm.renderers.builtin.scene import Scene, load_scene, parse_scene

__all__ = ["Scene", "load_scene", "parse_scene", "render_region"]


def __getattr__(name: str) -> Any:
    if name == "render_region":
        from renderfarm.renderers.builtin.raytrace import render_region

        return render_region
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
