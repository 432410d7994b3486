"""The command line's masks (--mask, --mask-alpha, --mask-mode): values, reports and heat maps."""

import csv
import io
import json

import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data

import cussim
from cussim import _cli, _imagefiles


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A grey pair, an RGBA pair whose alpha is the mask, and a grey mask image, in folders and alone."""
    root = tmp_path_factory.mktemp("masked")
    for folder in ("ref", "test", "masks"):
        (root / folder).mkdir()
    camera = data.camera()[:96, :112]
    rng = np.random.default_rng(0)
    noisy = np.clip(camera + rng.normal(0, 15, camera.shape), 0, 255).astype(np.uint8)
    mask = np.zeros(camera.shape, np.uint8)
    mask[10:80, 20:100] = 255
    mask[40:50, 40:60] = 128
    iio.imwrite(root / "ref" / "grey.png", camera)
    iio.imwrite(root / "test" / "grey.png", noisy)
    iio.imwrite(root / "masks" / "grey.png", mask)
    rgba = np.dstack([camera] * 3 + [mask])
    iio.imwrite(root / "ref.png", rgba)
    iio.imwrite(root / "test.png", np.dstack([noisy] * 3 + [mask]))
    return root, camera.astype(np.float64), noisy.astype(np.float64), mask / 255.0


def _run(argv, capsys):
    code = _cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("mode", ["mean", "normalized"])
def test_a_mask_folder_weights_each_pair(pair, capsys, mode):
    root, ref, test, weights = pair
    code, out, _ = _run([root / "ref", root / "test", "--mask", root / "masks", "--mask-mode", mode,
                         "--format", "csv", "--device", "cpu"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = cussim.ssim(test, ref, data_range=255, mask=weights, mask_mode=mode)
    assert rows[0]["pair"] == "grey.png" and abs(float(rows[0]["ssim"]) - expected) < 1e-12
    assert rows[0]["mask"] == f"{root / 'masks'} ({mode})"
    assert abs(expected - cussim.ssim(test, ref, data_range=255)) > 1e-3  # the mask changed the value


def test_the_alpha_channel_as_the_mask_in_json_and_heat_maps(pair, capsys, tmp_path):
    root, ref, test, weights = pair
    code, out, _ = _run([root / "ref.png", root / "test.png", "--mask-alpha", "--format", "json", "--map",
                         tmp_path, "--device", "cpu"], capsys)
    assert code == 0
    record = json.loads(out.splitlines()[0])
    colour = lambda a: np.dstack([a] * 3)  # noqa: E731
    expected = cussim.ssim(colour(test), colour(ref), data_range=255, channel_axis=-1, mask=weights)
    assert abs(record["ssim"] - expected) < 1e-12 and record["mask"] == "alpha (mean)"
    picture = iio.imread(tmp_path / "test.png.ssim.png")[_imagefiles._CAPTION :][:96, :112]
    assert (picture[weights == 0] == 128).all() and not (picture[weights > 0] == 128).all(axis=-1).any()


def test_one_mask_file_for_every_pair_and_the_table_says_so(pair, capsys):
    root, *_ = pair
    code, out, _ = _run([root / "ref" / "grey.png", root / "test" / "grey.png", "--mask",
                         root / "masks" / "grey.png", "--device", "cpu"], capsys)
    assert code == 0 and f"mask: {root / 'masks' / 'grey.png'} (mean)" in out


@pytest.mark.parametrize("extra, match", [
    (["--mask-mode", "normalized"], "--mask-mode needs --mask"),
    (["--mask", "nowhere", "--mask-alpha"], "pass one of them"),
    (["--mask", "nowhere"], "--mask 'nowhere' does not exist"),
    (["--mask-alpha", "--mask-mode", "normalized", "--skimage"], "population covariance only"),
    (["--mask-alpha", "--workers", "2"], "run on this machine only"),
])
def test_mask_usage_errors(pair, capsys, extra, match):
    root, *_ = pair
    code, _, err = _run([root / "ref", root / "test", *extra, "--device", "cpu"], capsys)
    assert code == 2 and match in err


def test_a_pair_without_alpha_fails_alone(pair, capsys):
    root, *_ = pair
    code, out, _ = _run([root / "ref", root / "test", "--mask-alpha", "--format", "csv", "--device", "cpu"], capsys)
    assert code == 1 and "no alpha channel to take as the mask" in out


def test_the_docs_picture_is_what_its_script_draws(tmp_path, capsys):
    import runpy
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    runpy.run_path(str(docs / "masks_figure.py"))["main"](tmp_path / "masks.png")
    np.testing.assert_array_equal(iio.imread(tmp_path / "masks.png"), iio.imread(docs / "masks.png"))


def test_one_mask_file_weights_every_pair_of_two_folders(pair, capsys):
    root, ref, test, weights = pair
    code, out, _ = _run([root / "ref", root / "test", "--mask", root / "masks" / "grey.png", "--format", "csv",
                         "--device", "cpu"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["pair"] for r in rows] == ["grey.png"]
    assert abs(float(rows[0]["ssim"]) - cussim.ssim(test, ref, data_range=255, mask=weights)) < 1e-12


def test_a_mask_folder_with_two_files_is_a_usage_error(pair, capsys):
    root, *_ = pair
    code, _, err = _run([root / "ref" / "grey.png", root / "test" / "grey.png", "--mask", root / "masks",
                         "--device", "cpu"], capsys)
    assert code == 2 and "a folder of masks goes with folders of images" in err


def test_an_unreadable_mask_file_is_a_usage_error_naming_it(pair, capsys, tmp_path):
    root, *_ = pair
    (tmp_path / "mask.png").write_bytes(b"not a png")
    code, out, err = _run([root / "ref", root / "test", "--mask", tmp_path / "mask.png", "--device", "cpu"], capsys)
    assert code == 2 and out == "" and f"{tmp_path / 'mask.png'}: cannot read it as an image" in err


def test_a_float_mask_image_gives_its_values_as_weights(pair, capsys, tmp_path):
    root, ref, test, weights = pair
    smooth = np.linspace(0.0, 1.0, weights.size, dtype=np.float32).reshape(weights.shape)
    iio.imwrite(tmp_path / "mask.tif", smooth)
    code, out, _ = _run([root / "ref" / "grey.png", root / "test" / "grey.png", "--mask", tmp_path / "mask.tif",
                         "--format", "csv", "--device", "cpu"], capsys)
    assert code == 0
    value = float(next(csv.DictReader(io.StringIO(out)))["ssim"])
    assert abs(value - cussim.ssim(test, ref, data_range=255, mask=smooth.astype(np.float64))) < 1e-12


def test_a_valid_map_is_masked_where_its_pixels_are(pair, capsys, tmp_path):
    """A "valid" map is 10 pixels smaller (win_size 11): its heat map is grey where the mask's inner part is 0."""
    root, ref, test, weights = pair
    code, out, _ = _run([root / "ref" / "grey.png", root / "test" / "grey.png", "--mask", root / "masks" / "grey.png",
                         "--padding", "valid", "--format", "csv", "--map", tmp_path, "--device", "cpu"], capsys)
    assert code == 0
    inner = weights[5:-5, 5:-5]
    picture = iio.imread(tmp_path / "grey.png.ssim.png")[_imagefiles._CAPTION :][: inner.shape[0], : inner.shape[1]]
    assert (picture[inner == 0] == 128).all() and not (picture[inner > 0] == 128).all(axis=-1).any()
    value = float(next(csv.DictReader(io.StringIO(out)))["ssim"])
    assert abs(value - cussim.ssim(test, ref, data_range=255, mask=weights, padding="valid")) < 1e-12
