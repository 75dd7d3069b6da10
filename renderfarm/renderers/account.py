"""The unprivileged user renders run as when the worker is root (`FARM_RENDER_USER`): who it is,
checked once at the worker's start, and the directories of an attempt it may write.

A renderer may run a scene's own scripts (`--allow-scripts`) or a job's own program. Run as the
worker's user, it could read `/proc/<worker>/environ` and the node's credentials file; run as
another, unprivileged user it can read neither (the kernel keeps another user's environ from it,
and the credentials file is 0600 root). Such a renderer writes only what is its own: an attempt's
`out/` and `tmp/`. The attempt directory itself (its log included) stays root's, and `out/` is
taken back before the worker reads a frame, so nothing it leaves behind (a link to the
credentials file, a process still running) can make the worker read or upload another file.

    scratch/               root, group of the render user, 0710: passable, not listable
      scenes/              root, 0710 group: a scene is readable by its name only
      attempts/            root, 0710 group
        attempt-N/         root, 0710 group: render.log (0600) is the worker's
          out/  tmp/       the render user's, 0700; out/ is root's again once the render ends
      session/             the render user's: a warm session's working directory
      openjd/              root, 0710 group
        <session>/         root, 0710 group: one warm OpenJD session (see the worker's openjd_runner)
          params/          root, 0710 group: inputs the worker staged are readable, never writable
            <OUT param>/   the render user's: the files a task writes there are its outputs
          <working dir>/   root, group of the render user, 0770 (openjd-sessions makes it)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderfarm.errors import ConfigError

PASSABLE = 0o710  # root's directories the render user's group may pass through, not list
SWEEP = ["/bin/kill", "-KILL", "-1"]  # run as the render user: every process of it but this one


@dataclass(frozen=True)
class RenderAccount:
    """The user renders run as, and what the worker does so that it can render and no more."""

    name: str
    uid: int
    gid: int

    def popen_args(self) -> dict[str, Any]:
        """Arguments to subprocess.Popen that start the renderer as this user, with no other group."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, env: dict[str, str], home: Path) -> dict[str, str]:
        """The renderer's environment: its own name, and a home it may write (never the worker's)."""
        return {**env, "HOME": str(home), "USER": self.name, "LOGNAME": self.name}

    def pass_through(self, path: Path) -> None:
        """A directory of the worker's that the renderer must pass through (not list, not write)."""
        os.chown(path, 0, self.gid)
        os.chmod(path, PASSABLE)

    def give(self, path: Path) -> None:
        """A directory the renderer writes: its own, private."""
        path.mkdir(exist_ok=True)
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        os.chmod(path, 0o700)

    def take_back(self, path: Path) -> None:
        """The renderer is done with `path`: the worker's alone again, so no process the renderer
        left behind can swap a file in it while the worker reads it."""
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, 0o700)

    def sweep(self) -> None:
        """Kill every process of the render user: one a renderer left behind (a daemon it forked
        out of its process group) must not outlive its render and tamper with the next one."""
        import subprocess

        try:
            subprocess.run(SWEEP, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10, env={}, **self.popen_args())  # kill(-1) spares only its caller
        except (OSError, subprocess.TimeoutExpired):
            pass

    def let_read(self, path: Path, top: Path) -> None:
        """A scene (a file, or a directory unpacked from a pack) that the renderer reads, where
        `top` is the cache directory holding it: readable by the render user's group, never writable."""
        self.pass_through(top)
        for item in [path, *(path.rglob("*") if path.is_dir() else ())]:
            st = item.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chown(item, 0, self.gid, follow_symlinks=False)
            os.chmod(item, 0o750 if stat.S_ISDIR(st.st_mode) else 0o640)

    def check_reach(self, path: Path, what: str, *, need: int = 1) -> None:
        """Refuse to start where the render user could not reach `path`: every directory above it
        must let the user pass (and the file itself allow `need`: 1 execute, 4 read)."""
        path = Path(os.path.abspath(path))
        for parent in reversed(path.parents):
            if parent.exists() and not self._may(parent.stat(), 1):
                raise ConfigError(
                    f"FARM_RENDER_USER={self.name} cannot reach {what} {path}: {parent} is mode "
                    f"{stat.S_IMODE(parent.stat().st_mode):04o} ({parent.stat().st_uid}:{parent.stat().st_gid}); "
                    f"let it pass (chmod o+x {parent}) or move {what} elsewhere"
                )
        if path.exists() and need and not self._may(path.stat(), need):
            raise ConfigError(f"FARM_RENDER_USER={self.name} cannot use {what} {path} (mode "
                              f"{stat.S_IMODE(path.stat().st_mode):04o})")

    def _may(self, st: os.stat_result, bit: int) -> bool:
        if st.st_uid == self.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid == self.gid:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)


def render_account(name: str | None) -> RenderAccount | None:
    """The account FARM_RENDER_USER names, or None when it is unset. ConfigError when the worker
    could not switch to it (it is not root) or it is no unprivileged user of this node."""
    if not name:
        return None
    import pwd

    if os.geteuid() != 0:
        raise ConfigError(f"FARM_RENDER_USER={name}: the worker runs as uid {os.geteuid()}, not root, so it cannot "
                          f"render as another user (start it as root, or unset FARM_RENDER_USER)")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"FARM_RENDER_USER={name}: no such user on this node (create it: useradd --system "
                          f"--user-group --no-create-home --shell /usr/sbin/nologin {name})") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfigError(f"FARM_RENDER_USER={name}: uid {entry.pw_uid}, gid {entry.pw_gid} is root's; renders "
                          f"need an unprivileged user")
    return RenderAccount(name, entry.pw_uid, entry.pw_gid)
