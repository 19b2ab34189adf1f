"""BackboneConfig: recorded whole in the manifest, the one way the reader recreates a backbone."""

import json

import numpy as np
import pytest

from embedsearch.build import BuildConfig, build_index
from embedsearch.core.errors import IndexStateError, SpecError
from embedsearch.models.config import BackboneConfig
from embedsearch.reader import Index
from embedsearch.sources.datasets import open_source


def test_manifest_records_the_whole_config_and_the_reader_uses_it(image_folder, index_root):
    build_index(open_source(str(image_folder)), BuildConfig.of(name="px", backbone="pixels:8", image_size=6),
                progress=False)
    ix = Index.open("px")
    rec = ix.manifest.build["backbone"]  # recorded once, in the build record, as it ran
    assert rec == BackboneConfig(spec="pixels:8", image_size=6, precision="fp32").to_dict()
    assert ix.manifest.backbone_config is None
    assert ix.backbone_config == BackboneConfig.from_dict(rec)
    bb = ix.backbone()
    assert bb.dim == 3 * 6 * 6 == ix.dim  # the recorded --image-size, not the spec's 8
    # manifests written before: a top-level `backbone_config` beside a flat build record, or neither
    from dataclasses import replace

    flat = {"name": "px", "backbone": "pixels:8", "image_size": 6, "pool": "default", "dtype": "float16",
            "index": "Flat", "seed": 0, "precision": "auto", "part_size": 2048, "engine": "local"}
    assert BackboneConfig.of_manifest(replace(ix.manifest, build=flat, backbone_config=rec)) == ix.backbone_config
    assert BackboneConfig.of_manifest(replace(ix.manifest, build=flat)).image_size == 6
    assert BuildConfig.from_dict(flat).faiss.factory == "Flat"
    assert BuildConfig.from_dict(ix.manifest.build).backbone == ix.backbone_config


def test_a_query_image_lands_on_its_stored_vector(image_folder, index_root):
    build_index(open_source(str(image_folder)), BuildConfig.of(name="px", backbone="pixels:8", image_size=6),
                progress=False)
    ix = Index.open("px")
    from embedsearch.query.search import query_vectors

    row = ix.select("split = 'test'")
    _, q = query_vectors(ix, images=[image_folder / row["path"][0]])
    np.testing.assert_array_equal(q[0].astype(np.float16), ix.vectors(row["id"][:1])[0].astype(np.float16))


def test_recreated_weights_must_match_the_recorded_hash():
    with pytest.raises(IndexStateError, match="different weights"):
        BackboneConfig("timm:test_vit", pretrained=False, weights_sha256="0" * 64).create("cpu")


@pytest.mark.parametrize("bad, match", [({"spec": 3}, "field backbone_config.spec must be str, not int 3"),
                                        ({"pool": "median"}, "unknown --pool"),
                                        ({"image_size": True}, "field backbone_config.image_size must be int/null"),
                                        ({"colour": "red"}, "unknown field 'colour'")])
def test_from_dict_names_the_bad_field(bad, match):
    with pytest.raises(IndexStateError, match=match):
        BackboneConfig.from_dict({**BackboneConfig().to_dict(), **bad})
    assert json.dumps(BackboneConfig().to_dict())  # plain JSON


def test_bad_pool_is_a_spec_error():
    with pytest.raises(SpecError, match="unknown --pool"):
        BackboneConfig(pool="median")
