"""farm.toml's sites read again while the manager runs: a changed price, band, carbon figure or
site applies within seconds, to the plans and to every attempt charged from then on, without a
restart. Only `[sites]` is read again; any other setting still takes a restart."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.config import read_sites, site_files
from renderfarm.errors import ConfigError

if TYPE_CHECKING:
    from renderfarm.config import Settings

log = logging.getLogger("renderfarm.manager")


class SitesWatch:
    """Looks at the farm.toml files' change stamps; reads their sites again when one changed."""

    def __init__(self, settings: Settings, cwd: Path | None = None) -> None:
        self.state_dir = settings.state_dir
        self.cwd = Path.cwd() if cwd is None else cwd
        self._seen = self._stamps()

    def _stamps(self) -> tuple:
        stamps = []
        for path in site_files(self.state_dir, self.cwd):
            try:
                st = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def changed(self, settings: Settings) -> Settings | None:
        """`settings` with the sites farm.toml names now, or None when they are as they were (or
        the file is not valid: then the sites stay as they were, and the error is logged once)."""
        stamps = self._stamps()
        if stamps == self._seen:
            return None
        self._seen = stamps
        try:
            sites = read_sites(self.state_dir, self.cwd)
        except ConfigError as e:
            log.error("farm.toml changed, but its sites are kept as they were: %s", e)
            return None
        if sites == settings.sites:
            return None
        log.info("sites read again from farm.toml: %s", ", ".join(sorted(sites)) or "none")
        return replace(settings, sites=sites)
