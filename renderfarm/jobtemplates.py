"""What the artist's side does with an Open Job Description template or job bundle: check it
as the manager will, upload the template (content-addressed, like a scene) and submit it."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm import keys
from renderfarm.capabilities import check_tags
from renderfarm.client import (
    _deadline,
    cli_number,
    current_user,
    hand_over,
    new_request_id,
    resolve_job,
)
from renderfarm.errors import FarmNotRunningError, InputError
from renderfarm.openjd import canonical, farm_values, read_bundle, template_sha256
from renderfarm.planning import PRIORITY_DEFAULT, slug
from renderfarm.redisconn import NOT_RUNNING_HINT, connect
from renderfarm.storage.keys import scene_key

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.wire import OpenJDSpec


@dataclass(frozen=True)
class TemplateSubmission:
    """An OpenJD template or bundle as the artist asked for it (not yet checked)."""

    path: Path
    params: tuple[str, ...] = ()  # -p NAME=VALUE, over the bundle's parameter_values
    priority: object = PRIORITY_DEFAULT  # the default gives way to a bundle's deadline:priority
    pool: str = "default"
    name: str | None = None  # default: the template's own name
    owner: str | None = None
    timeout: object = None
    max_workers: object = None
    after: str | None = None
    site: str | None = None
    prefer: str | None = None
    deadline: str | None = None
    requires: tuple[str, ...] = ()
    notify: str | None = None


def check_template_submission(settings: Settings, sub: TemplateSubmission,
                              warn: Callable[[str], None] = lambda _: None) -> OpenJDSpec:
    """The submission as the manager will parse it, with the farm's caps: the template checked by
    openjd-model and expanded. Raises InputError naming the bad field in one line."""
    return _checked(settings, sub, warn)[0]


def _checked(settings: Settings, sub: TemplateSubmission, warn: Callable[[str], None]):
    """The submission checked, and the files it brings (renderfarm.openjd_assets.Gathered)."""
    from renderfarm.openjd_assets import describe, gather
    from renderfarm.wire import Limits, OpenJDSpec

    bundle = read_bundle(Path(sub.path), sub.params)
    farm, values = farm_values(bundle.values)
    base = Path(sub.path) if Path(sub.path).is_dir() else Path(sub.path).parent
    gathered = gather(bundle.template, values, bundle.asset_references, base.absolute(), Limits.of(settings))
    assets, mappings = describe(gathered)
    if farm.ignored:
        warn(f"ignored: {', '.join(farm.ignored)} (the farm has no such setting)")
    name = sub.name or str(bundle.template.get("name") or Path(sub.path).stem)
    priority = cli_number(sub.priority)
    if farm.priority is not None and priority == PRIORITY_DEFAULT:
        priority = farm.priority
    doc = {
        "name": slug(re.sub(r"[{}\s]+", "-", name)),
        "owner": slug(sub.owner or current_user(), "owner")[:64],
        "source": bundle.source[:255],
        "template": bundle.template,
        "parameters": values,
        "priority": priority,
        "pool": slug(sub.pool, "pool")[:64],
        "timeout": cli_number(sub.timeout, real=True),
        "max_attempts": farm.max_attempts,
        "max_failed_tasks": farm.max_failed_tasks,
        "suspended": farm.suspended or None,
        "max_workers": cli_number(sub.max_workers) if sub.max_workers is not None else farm.max_workers,
        "site": settings.site(sub.site).name if sub.site is not None else None,
        "prefer": sub.prefer,
        "deadline": _deadline(sub.deadline),
        "requires": list(check_tags(sub.requires)),
        "notify": sub.notify,
        "assets": [a.model_dump() for a in assets] or None,
        "mappings": [m.model_dump() for m in mappings] or None,
    }
    doc = {k: v for k, v in doc.items() if v is not None}
    try:
        text = json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"template: holds a value JSON cannot carry ({e})") from None
    return OpenJDSpec.parse(text, limits=Limits.of(settings)), gathered


def submit_template(settings: Settings, sub: TemplateSubmission, *, request_id: str | None = None,
                    warn: Callable[[str], None] = lambda _: None) -> str:
    """Check the template, upload it (once per content), hand it to the manager; returns the job
    id once the manager has committed the job. The same `request_id` never makes a second job."""
    from renderfarm.openjd_assets import upload
    from renderfarm.storage import open_storage
    from renderfarm.wire import OpenJDSubmitIntent

    request_id = request_id or new_request_id()
    if not re.fullmatch(r"[0-9a-f]{32}", request_id):
        raise InputError(f"request-id: {request_id[:40]!r} is not 32 hex digits (as `farm submit` printed it)")
    spec, gathered = _checked(settings, sub, warn)
    if sub.after is not None:
        after, state = resolve_job(settings, sub.after)
        if state in ("failed", "cancelled"):
            warn(f"job {after} is {state}: this job waits until it is retried and done (`farm retry {after}`)")
        spec = spec.model_copy(update={"after": after})
    r = connect(settings)
    if not r.exists(keys.MANAGER_LEADER):
        raise FarmNotRunningError(f"the farm's manager is not running; {NOT_RUNNING_HINT}")
    storage = open_storage(settings)
    sha = template_sha256(spec.template)
    key = scene_key(sha, ".json")
    if storage.head(key) is None:  # the template as the job keeps it, for whoever wants it whole
        with tempfile.TemporaryDirectory(prefix="farm-submit-") as folder:
            path = Path(folder) / "template.json"
            path.write_bytes(canonical(spec.template))
            storage.put_file(key, path, sha256=sha)
    upload(storage, gathered, spec.assets)
    return hand_over(settings, r, OpenJDSubmitIntent(request_id=request_id, job=spec))
