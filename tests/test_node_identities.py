"""Render nodes' own S3 identities on the local farm's SeaweedFS (renderfarm/localfarm/identities.py):
a node reads and writes only under its own prefix, reads anything else only through a presigned URL,
and loses its access within 2 s of revocation; the farm's own keys keep working. Against a real
`farm up -d -w 0`, with SeaweedFS serving S3 itself (loopback) and through the --listen gateway."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import farm_env, farm_processes, run_farm, wait_for

from renderfarm.config import load_settings, read_local_file, with_overrides
from renderfarm.errors import InputError
from renderfarm.localfarm import identities
from renderfarm.storage import open_storage

pytestmark = pytest.mark.slow

BUCKET = "renderfarm"
SCENE = "scenes/0123abcd.toml"
FRAME = "jobs/j1/frames/shot.0001.png"
TILE = "jobs/j1/tiles/shot.0001.t0.png"
OTHER = "nodes/rn2/j1/t0/1/out.png"  # a node whose name starts like the one under test


class Farm:
    def __init__(self, tmp: Path, listen: str | None) -> None:
        self.tmp, self.state = tmp, tmp / "state"
        self.env = farm_env(self.state)
        self.up_args = ("up", "-d", "-w", "0") + (("--listen", listen) if listen else ())

    def up(self) -> None:
        run_farm(*self.up_args, env=self.env, timeout=120)

    def down(self) -> None:
        run_farm("down", env=self.env, check=False, timeout=120)

    def settings(self):
        return load_settings(self.env, cwd=self.tmp)


@pytest.fixture(scope="module", params=[None, "127.0.0.2"], ids=["mini", "gateway"])
def farm(request, tmp_path_factory):
    farm = Farm(tmp_path_factory.mktemp("identities"), request.param)
    try:
        farm.up()
        storage = open_storage(farm.settings())
        for key in (SCENE, FRAME, TILE, OTHER):
            storage.put_bytes(key, f"the farm's {key}".encode())
        yield farm
    finally:
        farm.down()
    assert not farm_processes(farm.state)


def s3(settings, keys):
    """A client of the farm's S3 endpoint with only these keys, no retries."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                        aws_access_key_id=keys[0], aws_secret_access_key=keys[1], config=config)


def status(call) -> int:
    """The HTTP status a call ends with (200 when it succeeds)."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    return 200


def admin_works(settings) -> None:
    storage = open_storage(settings)
    assert storage.get_bytes(FRAME) == f"the farm's {FRAME}".encode()
    assert storage.get_bytes(OTHER) == f"the farm's {OTHER}".encode()
    storage.put_bytes("nodes/rn/by-the-farm", b"ok")
    storage.delete(["nodes/rn/by-the-farm"])


def test_a_node_reads_and_writes_only_under_its_own_prefix(farm):
    settings = farm.settings()
    keys = identities.grant(settings, "rn")
    node = s3(settings, keys)
    own = "nodes/rn/j1/t0/1/out.png"

    assert status(lambda: node.put_object(Bucket=BUCKET, Key=own, Body=b"frame")) == 200
    assert node.get_object(Bucket=BUCKET, Key=own)["Body"].read() == b"frame"
    upload = node.create_multipart_upload(Bucket=BUCKET, Key="nodes/rn/j1/big.exr")["UploadId"]
    part = node.upload_part(Bucket=BUCKET, Key="nodes/rn/j1/big.exr", UploadId=upload, PartNumber=1, Body=b"x" * 100)
    node.complete_multipart_upload(Bucket=BUCKET, Key="nodes/rn/j1/big.exr", UploadId=upload,
                                   MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    assert status(lambda: node.delete_object(Bucket=BUCKET, Key=own)) in (200, 204)
    assert open_storage(settings).head(own) is None

    refused = {
        "get frame": lambda: node.get_object(Bucket=BUCKET, Key=FRAME),
        "put frame": lambda: node.put_object(Bucket=BUCKET, Key=FRAME, Body=b"forged"),
        "delete frame": lambda: node.delete_object(Bucket=BUCKET, Key=FRAME),
        "put tile": lambda: node.put_object(Bucket=BUCKET, Key=TILE, Body=b"forged"),
        "get scene": lambda: node.get_object(Bucket=BUCKET, Key=SCENE),
        "put scene": lambda: node.put_object(Bucket=BUCKET, Key=SCENE, Body=b"forged"),
        "list bucket": lambda: node.list_objects_v2(Bucket=BUCKET),
        "list own prefix": lambda: node.list_objects_v2(Bucket=BUCKET, Prefix="nodes/rn/"),
        "get other node's": lambda: node.get_object(Bucket=BUCKET, Key=OTHER),
        "put other node's": lambda: node.put_object(Bucket=BUCKET, Key=OTHER, Body=b"forged"),
        "delete other node's": lambda: node.delete_object(Bucket=BUCKET, Key=OTHER),
        "copy frame into own": lambda: node.copy_object(Bucket=BUCKET, Key="nodes/rn/copy",
                                                        CopySource={"Bucket": BUCKET, "Key": FRAME}),
        "create bucket": lambda: node.create_bucket(Bucket="elsewhere"),
    }
    answers = {what: status(call) for what, call in refused.items()}
    assert answers == {what: 403 for what in refused}
    batch = node.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": FRAME}, {"Key": OTHER}]})
    assert {e["Code"] for e in batch.get("Errors", [])} == {"AccessDenied"}
    admin_works(settings)


def test_a_presigned_url_reads_a_scene_without_credentials_until_it_expires(farm):
    settings = farm.settings()
    url = identities.grant_url(settings, SCENE, 3)
    assert "X-Amz-Signature=" in url and url.startswith(settings.s3_endpoint_url)
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.read() == f"the farm's {SCENE}".encode()
    tampered = url.replace("scenes/0123abcd.toml", "jobs/j1/frames/shot.0001.png")
    assert http_status(tampered) == 403
    wait_for(lambda: http_status(url) == 403, 10, "the presigned URL to expire")
    with pytest.raises(InputError, match="expires"):
        identities.grant_url(settings, SCENE, 8 * 24 * 3600)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as e:
        return e.code


def test_revocation_refuses_the_next_request_within_2_s(farm):
    settings = farm.settings()
    keys = identities.grant(settings, "rv")
    node = s3(settings, keys)
    assert status(lambda: node.put_object(Bucket=BUCKET, Key="nodes/rv/a", Body=b"1")) == 200
    start = time.monotonic()
    assert identities.revoke(settings, "rv") is True
    assert status(lambda: node.put_object(Bucket=BUCKET, Key="nodes/rv/b", Body=b"2")) == 403
    took = time.monotonic() - start
    print(f"\n[figures] revocation refused the next request after {took:.3f} s")
    assert took < 2.0
    assert status(lambda: node.get_object(Bucket=BUCKET, Key="nodes/rv/a")) == 403
    assert identities.revoke(settings, "rv") is False and "rv" not in identities.granted(settings)
    admin_works(settings)
    # The manager enrols it again with the keys it stored: they work again.
    assert identities.grant(settings, "rv", keys=keys) == keys
    assert status(lambda: node.get_object(Bucket=BUCKET, Key="nodes/rv/a")) == 200


@pytest.mark.parametrize("farm", [None], ids=["mini"], indirect=True)  # one layout: the same file
def test_identities_survive_farm_down_and_up(farm):
    """The manager puts back the S3 identity of every enrolled node at its start, and takes away
    any other: a revoked node's, and one granted outside enrollment (a stray)."""
    from renderfarm.enrollment import enroll, revoke

    settings = farm.settings()
    kept = enroll(settings, "kept")
    kept_keys = (kept.s3_access_key, kept.s3_secret_key)
    gone = enroll(settings, "gone")
    gone_keys = (gone.s3_access_key, gone.s3_secret_key)
    assert revoke(settings, "gone") is True
    stray = identities.grant(settings, "stray")
    farm.down()
    farm.up()
    settings = farm.settings()
    assert status(lambda: s3(settings, kept_keys).put_object(Bucket=BUCKET, Key="nodes/kept/x", Body=b"1")) == 200
    for name, keys_ in (("gone", gone_keys), ("stray", stray)):
        assert status(lambda: s3(settings, keys_).put_object(Bucket=BUCKET, Key=f"nodes/{name}/x", Body=b"1")) == 403
    assert identities.granted(settings) == ["kept"]
    assert (farm.state / "s3" / "s3.json").stat().st_mode & 0o777 == 0o600
    admin_works(settings)


def test_grant_checks_its_input_and_keeps_the_farms_own_keys(farm):
    settings = farm.settings()
    with pytest.raises(InputError, match="node"):
        identities.grant(settings, "../x")
    with pytest.raises(InputError, match="access key"):
        identities.grant(settings, "rk", keys=("short", "x" * 20))
    admin_key = read_local_file(settings.state_dir)["s3_access_key"]
    with pytest.raises(InputError, match="the farm's own"):
        identities.grant(settings, "rk", keys=(admin_key, "y" * 30))
    admin_works(settings)


def test_no_identities_where_the_local_farm_is_not_the_storage(tmp_path):
    settings = with_overrides(load_settings(farm_env(tmp_path / "state"), cwd=tmp_path),
                              storage_url=f"file://{tmp_path / 'store'}")
    assert identities.grant(settings, "rn") is None
    assert identities.revoke(settings, "rn") is False
    assert identities.granted(settings) == []
    assert identities.grant_url(settings, SCENE, 60) is None
