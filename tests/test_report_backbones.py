"""The report lists each backbone's licence, gating and weights identity from the output's provenance.json."""

from raddist import provenance
from raddist.report_backbones import backbones_section


def test_each_backbone_has_its_licence_and_weights(tmp_path):
    from raddist.spec import BackboneSpec

    binder = provenance.Binder("cpu")
    binder.weights(BackboneSpec(name="dinov3_vitb16", weights="random", alias="dinov3_b"))
    binder.weights(BackboneSpec(name="tiny_vit", weights="random"))
    provenance.write_record(str(tmp_path), binder.sources, "s")
    text = backbones_section(str(tmp_path))
    assert text.splitlines()[1:] == [
        "## Backbones — licence and weights", "",
        "| backbone | model | licence | gated | weights |", "|---|---|---|---|---|",
        "| dinov3_b | dinov3_vitb16 | dinov3-license | yes | `random` |",
        "| tiny_vit | tiny_vit | apache-2.0 | no | `random` |"]
    assert backbones_section(str(tmp_path / "absent")) == ""


def test_a_pinned_revision_is_the_weights_identity(monkeypatch):
    """A pinned hub revision names the weights (never the hub's main), so an update is never mixed in."""
    import dataclasses

    from raddist.backbones import registry
    from raddist.spec import BackboneSpec

    pinned = dataclasses.replace(registry.get_config("rad_dino"), name="rad_dino_pinned", revision="abc123")
    monkeypatch.setitem(registry._REGISTRY, "rad_dino_pinned", pinned)
    binder = provenance.Binder("cpu")
    assert binder.weights(BackboneSpec(name="rad_dino_pinned", weights="hub")) == "hub:microsoft/rad-dino@abc123"
    assert binder.sources.record()["backbones"]["rad_dino_pinned"]["license"].startswith("msrla")
