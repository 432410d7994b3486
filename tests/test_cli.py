"""The cussim command end to end, on image files the tests write."""

import csv
import io
import json
import os
import re
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity as skimage_ssim

from cussim import _cli, _imagefiles, _pairs


def _noisy(image, seed, sigma):
    top = np.iinfo(image.dtype).max
    noise = np.random.default_rng(seed).normal(0, sigma * top / 255, image.shape)
    return np.clip(image + noise, 0, top).astype(image.dtype)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """REF and TEST folders: grey, RGB, RGBA, 8 and 16 bit, PNG, JPEG and TIFF, some nested."""
    root = tmp_path_factory.mktemp("images")
    ref, test = root / "ref", root / "test"
    (ref / "nested").mkdir(parents=True)
    (test / "nested").mkdir(parents=True)
    camera = data.camera()[:160, :192]
    astronaut = data.astronaut()[:128, :144]
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 200, np.uint8)])
    images = {
        "grey8.png": camera,
        "grey16.png": camera.astype(np.uint16) * 257,
        "rgb8.png": astronaut,
        "rgba8.png": rgba,
        "rgb16.tif": astronaut.astype(np.uint16) * 257,  # Pillow writes no 16-bit colour PNG
        "nested/photo.jpg": astronaut,
        "nested/grey.jpg": camera,
    }
    expected = {}
    for k, (name, image) in enumerate(sorted(images.items())):
        distorted = _noisy(image, k, 12)
        if image.ndim == 3 and image.shape[-1] == 4:
            distorted[..., 3] = image[..., 3]
        iio.imwrite(ref / name, image)
        iio.imwrite(test / name, distorted)
        # What was written (JPEG is lossy): compared with scikit-image on the decoded pixels, alpha dropped.
        a, b = iio.imread(ref / name), iio.imread(test / name)
        a, b = (v[..., :3] if v.ndim == 3 else v for v in (a, b))
        expected[name] = skimage_ssim(a, b, channel_axis=-1 if a.ndim == 3 else None,
                                      data_range=np.iinfo(a.dtype).max)
    return ref, test, expected


def _run(argv, capsys):
    code = _cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folders_in_every_format_match_skimage(folders, capsys, tmp_path):
    ref, test, expected = folders
    code, out, _ = _run([ref, test, "--skimage", "--format", "json"], capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert {r["pair"] for r in rows} == set(expected)
    for r in rows:  # scikit-image's numbers to 1e-10 on the CPU (float64, as scikit-image on integer images)
        assert r["ssim"] == pytest.approx(expected[r["pair"]], abs=1e-10)
        assert r["dssim"] == pytest.approx((1 - r["ssim"]) / 2)
    assert summary["compared"] == len(expected) and summary["failed"] == 0
    assert summary["min_ssim"] == pytest.approx(min(expected.values()), abs=1e-6)

    code, out, err = _run([ref, test, "--skimage", "--format", "csv"], capsys)
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert {r["pair"]: float(r["ssim"]) for r in table} == pytest.approx(expected, abs=1e-10)
    assert "pairs compared" in err  # csv keeps its summary off the data

    output = tmp_path / "results.txt"
    code, out, _ = _run([ref, test, "--skimage", "--output", output], capsys)
    assert code == 0 and out == ""
    text = output.read_text()
    assert text.startswith("computed by: CPU, cussim's NumPy reference in float64 arithmetic")
    assert "mean SSIM" in text and "worst:" in text
    for name, value in expected.items():
        row = next(line for line in text.splitlines() if line.startswith(name + " "))
        assert float(row.split()[1]) == pytest.approx(value, abs=1e-6)


def test_two_files_native_metric_and_maps(folders, capsys, tmp_path):
    ref, test, _ = folders
    code, out, _ = _run([ref / "rgb8.png", test / "rgb8.png", "--format", "json", "--win-size", "7",
                         "--map", tmp_path / "maps"], capsys)
    assert code == 0
    row = json.loads(out.splitlines()[0])
    import cussim

    a, b = iio.imread(ref / "rgb8.png"), iio.imread(test / "rgb8.png")
    assert row["ssim"] == pytest.approx(float(cussim.ssim(b, a, channel_axis=-1, win_size=7)), abs=1e-7)
    heat = iio.imread(tmp_path / "maps" / "rgb8.ssim.png")
    assert heat.dtype == np.uint8 and heat.shape[0] > 128 and heat.shape[1] > 144
    picture = _imagefiles.heat_map(cussim.ssim_map(b, a, channel_axis=-1, win_size=7))
    assert np.array_equal(heat[-128:, :144], picture)  # the map itself, under the caption


def test_float_images_need_a_data_range(capsys, tmp_path):
    """A float image has no implied range: never a silently mis-scaled number, on the CPU or the GPU."""
    rng = np.random.default_rng(0)
    reference = (rng.random((40, 48)) * 255).astype(np.float32)
    test = np.clip(reference + rng.normal(0, 12, reference.shape), 0, 255).astype(np.float32)
    iio.imwrite(tmp_path / "ref.tif", reference)
    iio.imwrite(tmp_path / "test.tif", test)
    code, out, _ = _run([tmp_path / "ref.tif", tmp_path / "test.tif", "--format", "json"], capsys)
    assert code == 1 and "float pixels have no implied value range: pass --data-range" in out
    code, out, _ = _run([tmp_path / "ref.tif", tmp_path / "test.tif", "--format", "json", "--skimage",
                         "--data-range", "255"], capsys)
    assert code == 0
    expected = skimage_ssim(reference.astype(np.float64), test.astype(np.float64), data_range=255)
    assert json.loads(out.splitlines()[0])["ssim"] == pytest.approx(expected, abs=1e-10)


def test_heat_maps_carry_their_scale_and_the_pairs_ssim():
    ssim_map = np.linspace(0, 1, 40 * 50).reshape(40, 50)
    low, high = (_imagefiles.labelled_heat_map(ssim_map, value) for value in (0.1, 0.9))
    assert low.shape == high.shape and low.shape[1] > 50
    caption = slice(0, low.shape[0] - 48)  # the bar is at least 48 rows tall
    assert not np.array_equal(low[caption], high[caption])  # the value is written above the map
    assert np.array_equal(low[caption.stop:], high[caption.stop:])
    bar = low[caption.stop:, 50:].reshape(-1, 3)
    ramp = [tuple(c) for c in _imagefiles.heat_map(np.array([1.0, 0.0]))]
    assert all(colour in {tuple(c) for c in bar} for colour in ramp)  # the colour bar runs from 1 to 0


def test_failed_pairs_are_reported_and_the_rest_compared(folders, capsys, tmp_path):
    ref, test, expected = folders
    broken_ref, broken_test = tmp_path / "ref", tmp_path / "test"
    broken_ref.mkdir()
    broken_test.mkdir()
    camera = data.camera()[:64, :64]
    for name in ("good.png", "missing.png", "corrupt.png", "resized.png", "tiny.png"):
        iio.imwrite(broken_ref / name, camera if name != "tiny.png" else camera[:6, :6])
    iio.imwrite(broken_test / "good.png", camera)
    (broken_test / "corrupt.png").write_bytes(b"not a png")
    iio.imwrite(broken_test / "resized.png", camera[:60])
    iio.imwrite(broken_test / "tiny.png", camera[:6, :6])
    iio.imwrite(broken_test / "only-in-test.png", camera)
    code, out, _ = _run([broken_ref, broken_test, "--format", "json"], capsys)
    assert code == 1
    rows = {r["pair"]: r for r in map(json.loads, out.splitlines()[:-1])}
    assert rows["good.png"]["ssim"] == 1.0
    assert rows["missing.png"]["error"] == f"{broken_test / 'missing.png'}: no such file"
    assert rows["only-in-test.png"]["error"] == f"{broken_ref / 'only-in-test.png'}: no such file"
    assert "corrupt.png: cannot read it as an image" in rows["corrupt.png"]["error"]
    assert "does not match the reference" in rows["resized.png"]["error"]
    assert "smaller than the 11x11 window" in rows["tiny.png"]["error"]
    code, out, _ = _run([broken_ref, broken_test, "--format", "csv", "--strict"], capsys)
    assert code == 1
    assert [r["pair"] for r in csv.DictReader(io.StringIO(out))] == ["corrupt.png"]  # stopped at the first failure


@pytest.mark.parametrize(
    "argv, match",
    [
        (["{missing}", "{test}"], "REF '.*nowhere' does not exist"),
        (["{ref}", "{missing}"], "TEST '.*nowhere' does not exist"),
        (["{ref}", "{test}/grey8.png"], "must be two files or two folders"),
        (["{empty}", "{empty}"], "no image pairs: neither"),
        (["{ref}", "{test}", "--bogus"], "unrecognized arguments: --bogus"),
        (["{ref}", "{test}", "--win-size", "8"], "win_size must be odd"),
        (["{ref}", "{test}", "--format", "xml"], "argument --format: invalid choice"),
        (["{ref}"], "the following arguments are required: TEST"),
        (["demo", "--images", "lena"], "argument --images: invalid choice"),
        (["{ref}", "{test}", "--output", "{missing}/deeper/out.csv"], "No such file or directory"),
        (["{ref}", "{test}", "--map", "{ref}/grey8.png"], "grey8.png: File exists"),
    ],
)
def test_usage_errors_exit_2_under_the_usage_line(folders, capsys, tmp_path, argv, match):
    ref, test, _ = folders
    (tmp_path / "empty").mkdir()
    values = dict(ref=ref, test=test, missing=tmp_path / "nowhere", empty=tmp_path / "empty")
    code, out, err = _run([a.format(**values) for a in argv], capsys)
    assert code == 2 and out == ""
    usage = "usage: cussim demo [-h]" if argv[0] == "demo" else "usage: cussim [-h]"
    *head, last = err.strip().splitlines()
    assert err.startswith(usage) and all(not line.startswith("cussim: error") for line in head)
    assert last.startswith("cussim: error: ") and re.search(match, last)


@pytest.mark.parametrize("parser", [_cli.compare_parser, _cli.demo_parser])
def test_help_gives_every_option_a_meaning_and_its_default(parser):
    for action in parser()._actions:
        assert action.help and len(action.help) > 20, action.option_strings
        if action.option_strings and action.option_strings[0] in (
                "--window", "--win-size", "--sigma", "--padding", "--k1", "--k2", "--data-range", "--format",
                "--output", "--device", "--seed", "--images", "--map"):
            assert "default" in action.help, action.option_strings
    text = _cli.compare_parser().format_help()
    assert "Exit codes" in text and "--skimage" in text and "bright yellow (1)" in text


def test_csv_lines_end_with_lf(folders, capsys, tmp_path):
    ref, test, _ = folders
    code, _, _ = _run([ref, test, "--format", "csv", "--output", tmp_path / "r.csv"], capsys)
    data_bytes = (tmp_path / "r.csv").read_bytes()
    assert code == 0 and b"\r" not in data_bytes and data_bytes.count(b"\n") == 8  # header and 7 pairs


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = _cli.Progress(4)
    for _ in range(4):
        bar.step()
    bar.close()
    assert "4/4 pairs" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    quiet = _cli.Progress(4)
    quiet.step()
    assert capsys.readouterr().err == ""


def test_device_gpu_without_one(folders, capsys, monkeypatch):
    ref, test, _ = folders
    monkeypatch.setattr(_pairs, "_gpu", lambda: (None, "no CUDA device"))
    code, _, err = _run([ref, test, "--device", "gpu"], capsys)
    assert code == 2 and "--device gpu: no GPU available" in err


def test_demo_writes_maps_when_asked(capsys, tmp_path):
    code, out, _ = _run(["demo", "--images", "camera", "--map", tmp_path / "maps", "--device", "cpu"], capsys)
    assert code == 0 and "computed by: CPU" in out and f"SSIM maps in {tmp_path / 'maps'}" in out
    assert len(list((tmp_path / "maps").glob("camera-*.ssim.png"))) == 5


def test_console_script_and_module(folders):
    ref, test, _ = folders
    result = subprocess.run([sys.executable, "-m", "cussim", str(ref / "grey8.png"), str(test / "grey8.png"),
                             "--format", "csv"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("pair,ssim,dssim,error")


def test_a_closed_stdout_ends_quietly(monkeypatch):
    """`cussim ... | head`: the reader goes away; exit 141 (128 + SIGPIPE), no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert _cli.main(["precompile", "--list"]) == 141
