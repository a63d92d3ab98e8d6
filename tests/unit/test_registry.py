"""Every registered model spec is complete and self-consistent."""

from __future__ import annotations

import pytest

from export.registry import REGISTRY, WEIGHTS_DIR

SPECS = [entry.spec for entry in REGISTRY.values()]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_is_keyed_by_its_spec_and_complete(name: str) -> None:
    entry = REGISTRY[name]
    assert entry.spec.name == name and callable(entry.build)
    assert (entry.cut_graphs is not None) == bool(entry.spec.graph_layout)  # multi-graph models cut their graphs
    assert entry.train_demo is not None  # every model has demo weights
    assert not entry.needs_sam_checkpoint or entry.load_official is not None


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_labels_are_unique_sorted_and_coded(spec) -> None:
    ids = [label.id for label in spec.labels]
    assert ids[0] == 0 and ids == sorted(set(ids)) and max(ids) <= 255  # uint8 label maps; BraTS skips 3
    assert len({label.name for label in spec.labels}) == len(spec.labels)
    for label in spec.labels:
        for code in (label.category, label.type):
            # SNOMED CT, or a local scheme ("99" prefix, DICOM PS3.16 8.2) where SNOMED has no concept
            assert (code.value.isdigit() and code.scheme == "SCT") or code.scheme.startswith("99")
            assert code.meaning and len(code.value) <= 16  # DICOM SH
        assert all(0 <= c <= 255 for c in label.color)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_variants_have_paper_and_small_and_tensors(spec) -> None:
    assert {"paper", "small"} <= set(spec.variants)
    for name, variant in spec.variants.items():
        inputs, outputs = spec.tensors(name)
        batched = all(graph.batched for graph in spec.graphs(name))
        assert inputs[0].shape[0] == (-1 if batched else 1) and outputs[0].shape[0] == -1
        assert inputs[0].shape[2:] == variant.input_size
        if spec.task == "class_prompted":  # one mask per prompted class (axis 0), one class id per prompt
            assert outputs[0].shape[1] == 1 and inputs[1].dtype == "int64" and inputs[1].shape == (-1,)
        else:
            assert outputs[0].shape[1] == (len(spec.regions) if spec.regions else len(spec.labels))
        assert spec.preprocessing(name).size == variant.input_size
        assert "default" in spec.preprocessing(name).intensity
        if variant.demo_weights:
            assert (WEIGHTS_DIR / variant.demo_weights).is_file()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.regions], ids=lambda s: s.name)
def test_regions_cover_the_output_channels_and_paint_known_labels(spec) -> None:
    ids = {label.id for label in spec.labels}
    assert sorted(region.channel for region in spec.regions) == list(range(len(spec.regions)))
    for region in spec.regions:
        assert region.paint_label in region.labels and set(region.labels) <= ids - {0}
    # outermost first: each region contains the ones painted after it
    for outer, inner in zip(spec.regions, spec.regions[1:]):
        assert set(inner.labels) <= set(outer.labels)
    assert spec.activation == "sigmoid"


def test_unknown_variant_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no variant 'huge'"):
        SPECS[0].variant("huge")
