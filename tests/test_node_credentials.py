"""A node's credentials file as the node reads it: the settings it points the worker at."""

from __future__ import annotations

from renderfarm.config import load_settings
from renderfarm.enrollment import NodeCredentials


def credentials(site: str) -> NodeCredentials:
    return NodeCredentials(name="node17", node_id="n0123abcd", key="k" * 32, redis_url="redis://u:p@10.0.0.5:6379/0",
                           storage_url="s3://renders/farm", s3_endpoint_url="http://10.0.0.5:8333", site=site)


def test_a_node_serves_the_site_it_was_enrolled_at_without_a_farm_toml_naming_it(tmp_path):
    # `farm node add --site dc-north` checked the site against the farm's farm.toml; the node has none.
    bare = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    settings = credentials("dc-north").settings(bare)
    assert settings.site("dc-north").name == "dc-north"
    assert (settings.redis_url, settings.s3_endpoint_url) == ("redis://u:p@10.0.0.5:6379/0", "http://10.0.0.5:8333")
    assert "dc-north" not in bare.sites  # the settings it was given are left as they were


def test_a_site_the_nodes_own_farm_toml_names_keeps_its_values(tmp_path):
    (tmp_path / "farm.toml").write_text("[sites.dc-north]\nwatts = 450\n")
    own = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert credentials("dc-north").settings(own).site("dc-north").watts == 450


def test_a_node_enrolled_at_the_default_site_leaves_the_sites_as_configured(tmp_path):
    bare = load_settings({"FARM_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    settings = credentials("local").settings(bare)
    assert settings.sites == {} and settings.site("local").name == "local"
