"""The cussim command on 3-D stacks (``--volumes``): multi-page TIFFs and .npy arrays."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity as skimage_ssim

import cussim
from cussim import _cli


def _tiff_stack(path, volume):
    pages = [Image.fromarray(page) for page in volume]
    pages[0].save(path, save_all=True, append_images=pages[1:])


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """REF and TEST folders of volumes: an 8-bit grey TIFF stack, a 16-bit one, an 8-bit RGB .npy; and a float
    .npy pair beside them (float pixels need --data-range)."""
    root = tmp_path_factory.mktemp("volumes")
    ref, test = root / "ref", root / "test"
    ref.mkdir()
    test.mkdir()
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((14, 24, 26)), 2)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    noisy = np.clip(smooth + 0.08 * rng.standard_normal(smooth.shape), 0, 1)
    volumes = {
        "grey8.tif": ((smooth * 255).round().astype(np.uint8), (noisy * 255).round().astype(np.uint8), 255),
        "grey16.tiff": ((smooth * 65535).round().astype(np.uint16), (noisy * 65535).round().astype(np.uint16),
                        65535),
        "rgb8.npy": ((np.stack([smooth, noisy, smooth], -1) * 255).round().astype(np.uint8),
                     (np.stack([noisy, smooth, noisy], -1) * 255).round().astype(np.uint8), 255),
    }
    expected = {}
    for name, (a, b, top) in volumes.items():
        for folder, volume in ((ref, a), (test, b)):
            if name.endswith(".npy"):
                np.save(folder / name, volume)
            else:
                _tiff_stack(folder / name, volume)
        expected[name] = skimage_ssim(b, a, data_range=top, channel_axis=-1 if a.ndim == 4 else None)
    (ref / "flat.png").write_bytes(b"not read: not a volume suffix")
    np.save(root / "float-ref.npy", smooth.astype(np.float32))
    np.save(root / "float-test.npy", noisy.astype(np.float32))
    return ref, test, expected


def _json_rows(argv, capsys):
    code = _cli.main([str(a) for a in argv])
    out = capsys.readouterr().out
    return code, {row["pair"]: row for row in map(json.loads, out.splitlines()) if "pair" in row}


def test_volume_folders_match_skimage(stacks, capsys):
    ref, test, expected = stacks
    code, rows = _json_rows([ref, test, "--volumes", "--skimage", "--format", "json", "--device", "cpu"], capsys)
    assert code == 0 and set(rows) == set(expected)
    for name, value in expected.items():  # integer and float32 volumes give float32 results
        assert abs(rows[name]["ssim"] - value) < 1e-6, name


def test_single_float_stacks_with_native_options(stacks, capsys):
    root = stacks[0].parent
    code, rows = _json_rows([root / "float-ref.npy", root / "float-test.npy", "--volumes", "--win-size", "7",
                             "--data-range", "1", "--format", "json", "--device", "cpu"], capsys)
    expected = cussim.ssim(np.load(root / "float-test.npy"), np.load(root / "float-ref.npy"), win_size=7,
                           spatial_dims=3)
    assert code == 0 and abs(rows["float-test.npy"]["ssim"] - float(expected)) < 1e-7


def test_without_volumes_a_stack_is_no_image(stacks, capsys):
    ref, test, _ = stacks
    code, rows = _json_rows([ref / "grey8.tif", test / "grey8.tif", "--format", "json", "--device", "cpu"], capsys)
    assert code == 1 and "neither a grey nor a colour image" in rows["grey8.tif"]["error"]


def test_volume_errors(stacks, tmp_path, capsys):
    ref, test, _ = stacks
    assert _cli.main([str(ref), str(test), "--volumes", "--map", str(tmp_path)]) == 2
    assert "--map draws 2-D heat maps" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli.main([str(empty), str(empty), "--volumes"]) == 2
    assert "no volume pairs" in capsys.readouterr().err
    np.save(tmp_path / "flat.npy", np.zeros((20, 20), np.uint8))
    code, rows = _json_rows([tmp_path / "flat.npy", tmp_path / "flat.npy", "--volumes", "--format", "json"], capsys)
    assert code == 1 and "neither a grey nor a colour volume" in rows["flat.npy"]["error"]
    np.save(tmp_path / "small.npy", np.zeros((5, 20, 20), np.uint8))
    code, rows = _json_rows([tmp_path / "small.npy", tmp_path / "small.npy", "--volumes", "--format", "json"], capsys)
    assert code == 1 and "smaller than the 11x11x11 window" in rows["small.npy"]["error"]
