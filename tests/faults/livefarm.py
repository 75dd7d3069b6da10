"""A real local farm for fault tests: started with `farm up -d`, its processes found from its run
file, its database read directly, its storage and Valkey reached with its own settings."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import EXAMPLES, farm_env, farm_processes, run_farm, wait_for

from renderfarm.config import load_settings
from renderfarm.storage import open_storage

HEARTBEAT_TTL = 3.0


class LiveFarm:
    def __init__(self, tmp: Path, workers: int = 2, *, supervise: bool = False, **env: str) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.workers = workers
        # These tests kill processes and start them again themselves: no supervisor unless asked.
        self.up_args = () if supervise else ("--no-supervise",)
        self.env = farm_env(self.state, FARM_HEARTBEAT_TTL=f"{HEARTBEAT_TTL:g}", FARM_ALLOW_COMMANDS="1", **env)

    # -- processes ------------------------------------------------------------------------------

    def up(self) -> None:
        run_farm("up", "-d", "-w", str(self.workers), *self.up_args, env=self.env, timeout=120)

    def down(self) -> None:
        run_farm("down", env=self.env, check=False, timeout=120)
        left = farm_processes(self.state)
        for line in left:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        assert not left, f"processes left after farm down: {left}"

    def pids(self) -> dict[str, int]:
        doc = json.loads((self.state / "run.json").read_text())
        return {p["name"]: p["pid"] for p in doc["processes"]}

    def worker_names(self) -> list[str]:
        return sorted(n for n in self.pids() if n.rsplit("-", 1)[-1].startswith("w"))

    def children(self, pid: int) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, scene: Path, *args: str) -> str:
        out = run_farm("submit", str(scene), *args, "--json", env=self.env, timeout=120)
        return json.loads(out.stdout)["id"]

    def db(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.state / 'farm.db'}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def query(self, sql: str, *args) -> list[sqlite3.Row]:
        with self.db() as db:
            return db.execute(sql, args).fetchall()

    def job_state(self, job: str) -> str:
        return self.query("select state from jobs where id = ?", job)[0]["state"]

    def done_tasks(self, job: str) -> int:
        return self.query("select count(*) n from tasks where job_id = ? and state = 'done'", job)[0]["n"]

    def attempts(self, job: str) -> list[sqlite3.Row]:
        return self.query(
            "select t.[index] task, a.number, a.worker, a.state, a.queued_at, a.started_at, a.finished_at, a.error "
            "from attempts a join tasks t on t.id = a.task_id where a.job_id = ? order by t.[index], a.number", job
        )

    def live_on(self, job: str, worker: str) -> list[sqlite3.Row]:
        """The worker's unfinished attempts, the one it is on first. A frame shorter than the
        worker's started-event delay goes from queued to done, so queued ones count too."""
        live = [a for a in self.attempts(job) if a["worker"] == worker and a["state"] in ("queued", "running")]
        return sorted(live, key=lambda a: (a["state"] != "running", a["queued_at"]))

    def wait_job(self, job: str, timeout: float = 180) -> str:
        wait_for(lambda: self.job_state(job) in ("done", "failed", "cancelled"), timeout, f"job {job} to finish")
        return self.job_state(job)

    def rendered_twice(self, job: str) -> int:
        """Tasks that more than one attempt started rendering."""
        rows = self.query(
            "select task_id from attempts where job_id = ? and started_at is not null "
            "group by task_id having count(*) > 1", job
        )
        return len(rows)

    # -- storage and Valkey -----------------------------------------------------------------------

    def settings(self):
        return load_settings(self.env, cwd=self.tmp)

    def storage(self):
        return open_storage(self.settings())

    def redis(self):
        from renderfarm.redisconn import connect

        return connect(self.settings())

    def check_frames(self, job: str, name: str, frames: list[int], size: tuple[int, int]) -> None:
        """Every frame at its final key once, a valid PNG of the job's size, its SHA-256 intact."""
        import hashlib
        import io

        from PIL import Image

        storage = self.storage()
        keys = sorted(o.key for o in storage.list(f"jobs/{job}/frames/"))
        assert keys == sorted(f"jobs/{job}/frames/{name}.{f:04d}.png" for f in frames)
        for key in keys:
            data = storage.get_bytes(key)
            info = storage.head(key)
            assert info.sha256 == hashlib.sha256(data).hexdigest(), key
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                assert img.size == size, key


def report(test: str, **figures) -> None:
    """Print a test's measured figures on one line (shown with -s, and in CI's log on failure)."""
    text = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[fault figures] {test}: {text}", file=sys.stderr)


def command_scene(tmp: Path, script: str, *, frames: str, size: tuple[int, int] = (64, 36)) -> Path:
    """A command-renderer scene running `script` with python: argv[1] frame, argv[2] output,
    argv[3] width, argv[4] height, argv[5] a directory for marker files."""
    marks = tmp / "marks"
    marks.mkdir(exist_ok=True)
    script_path = tmp / "render.py"
    script_path.write_text(script)
    scene = tmp / "shot.toml"
    argv = [sys.executable, str(script_path), "{frame}", "{output}", "{width}", "{height}", str(marks)]
    scene.write_text(
        f'[render]\nwidth = {size[0]}\nheight = {size[1]}\nframes = "{frames}"\n\n'
        f"[command]\nargv = {json.dumps(argv)}\n"
    )
    return scene


BOUNCING = EXAMPLES / "bouncing-balls.toml"
__all__ = ["BOUNCING", "HEARTBEAT_TTL", "LiveFarm", "command_scene", "report", "time"]
