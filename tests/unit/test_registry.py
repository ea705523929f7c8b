"""raynas.registry: components by name, option checks, entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raynas.errors import ConfigError
from raynas.registry import Registry

PLUGIN = Path(__file__).resolve().parents[1] / "plugin"


def test_create_checks_names_and_options():
    reg: Registry = Registry("widget", "x.widget")

    @reg.register("round")
    def round_widget(space, radius: float = 1.0):
        return ("round", space, radius)

    assert reg.create("round", {"radius": 2.0}, space="S") == ("round", "S", 2.0)
    with pytest.raises(ConfigError, match=r"x.widget = 'square': unknown widget; choose one "
                                          "of round"):
        reg.get("square")
    with pytest.raises(ConfigError, match=r"x.widget.options.size = 3: unknown option for "
                                          "widget 'round'; allowed: radius"):
        reg.create("round", {"size": 3}, space="S")
    # what raynas supplies is not the user's to set
    with pytest.raises(ConfigError, match="x.widget.options.space"):
        reg.create("round", {"space": "T"}, space="S")


def test_entry_points_register_on_first_lookup(monkeypatch):
    from raynas.supernets import FAMILIES

    FAMILIES.names()  # built-ins registered before the registry is copied
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.setattr(FAMILIES, "_loaded", False)
    monkeypatch.setattr(FAMILIES, "_items", dict(FAMILIES._items))
    try:
        assert "plugin_mlp" in FAMILIES.names()
        fam = FAMILIES.get("plugin_mlp")
        assert fam.tasks == ("classification",)
    finally:
        sys.modules.pop("raynas_plugin_mlp", None)


def test_a_broken_plugin_is_named(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[raynas.widgets]\nbad = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("widget", "x.widget", group="raynas.widgets")
    with pytest.raises(ConfigError, match="entry point 'bad' of group 'raynas.widgets' "
                                          r"\(no_such_module_xyz\) failed to load"):
        reg.names()


def test_a_space_dimension_no_family_reads_is_refused(repo_root):
    from raynas.space import SearchSpace
    from raynas.supernets import check_space, create_supernet

    doc = SearchSpace.load(repo_root / "search_spaces" / "tiny_cnn.yaml").to_dict()
    doc["dims"]["lr"] = {"type": "float", "low": 1e-4, "high": 0.1, "log": True}
    space = SearchSpace.from_dict(doc)
    msg = "dimension 'lr' is not read by family 'cnn'"
    with pytest.raises(ConfigError, match=msg):
        check_space(space)
    with pytest.raises(ConfigError, match=msg):
        create_supernet(space)
