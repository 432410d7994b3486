"""The cussim command end to end, on image files the tests write."""

import csv
import fcntl
import io
import json
import os
import pty
import re
import runpy
import struct
import subprocess
import sys
import termios
from pathlib import Path

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
    heat = iio.imread(tmp_path / "maps" / "rgb8.png.ssim.png")
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
    named = _imagefiles.labelled_heat_map(ssim_map, 0.1, "test/cam.png against ref/cam.png")
    assert named.shape[1] >= 6 * len("test/cam.png against ref/cam.png")  # the names fit the caption
    assert not np.array_equal(named[:low.shape[0] - 48, :50], low[:, :50][:low.shape[0] - 48])
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
    assert rows["tiny.png"]["error"] == (f"{broken_test / 'tiny.png'}: the image is 6x6, smaller than the 11x11 "
                                         "window: pass --win-size 5 or less (odd)")
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
        (["{ref}", "{test}", "--output", "{ref}/grey8.png"], "would replace the input .*grey8.png"),
        (["{ref}", "{test}", "--output", "{ref}", "--overwrite"], "--output .*: Is a directory"),
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
    text = " ".join(_cli.compare_parser().format_help().split())
    assert "Exit codes" in text and "--skimage" in text and "bright yellow (1)" in text
    assert "cussim demo" in text and "cussim precompile" in text and "replaced only with --overwrite" in text


def test_csv_lines_end_with_lf(folders, capsys, tmp_path):
    ref, test, _ = folders
    code, _, _ = _run([ref, test, "--format", "csv", "--output", tmp_path / "r.csv"], capsys)
    data_bytes = (tmp_path / "r.csv").read_bytes()
    assert code == 0 and b"\r" not in data_bytes and data_bytes.count(b"\n") == 8  # header and 7 pairs


def _terminal_lines(text: str) -> list:
    """The lines a terminal shows for ``text``: a carriage return moves to the line's start, later characters
    overwrite earlier ones, a newline ends the line."""
    lines, line, column = [], [], 0
    for character in text:
        if character == "\r":
            column = 0
        elif character == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        else:
            line[column:column + 1] = [character]
            column += 1
    return lines + ["".join(line).rstrip()]


def test_progress_bar_on_a_terminal_never_garbles_the_rows(tmp_path):
    """stdout and stderr on one terminal: each row starts a clean line, the bar (count, rate) shows between
    them and is gone at the end."""
    ref, test = tmp_path / "ref", tmp_path / "test"
    ref.mkdir()
    test.mkdir()
    camera = data.camera()[:24, :24]
    names = [f"image{k}.png" for k in range(6)]
    for k, name in enumerate(names):
        iio.imwrite(ref / name, camera)
        iio.imwrite(test / name, _noisy(camera, k, 12))
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows of 100 columns
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(_cli.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "cussim", str(ref), str(test), "--device", "cpu"],
                               stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait() == 0
    shown = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's newline
    assert "pair/s" in shown and "/6" in shown  # the bar was drawn, with its rate
    lines = [line for line in _terminal_lines(shown) if line]
    rows = [line for line in lines if line.startswith("image")]
    assert [row.split()[0] for row in rows] == names
    assert all(re.fullmatch(r"image\d\.png +\d\.\d{6} +\d\.\d{6}", row) for row in rows), rows
    assert lines[0].startswith("computed by: CPU") and lines[-1].startswith("worst: ")
    assert not [line for line in lines if "pair/s" in line or "%|" in line]  # no bar left on any line


def test_progress_bar_is_off_unless_stderr_is_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with _cli.progress_bar(4) as bar:
        bar.update()
    assert capsys.readouterr().err == ""


def test_outputs_never_replace_an_input(capsys, tmp_path):
    """--output and --map are refused, before anything is written, where they would replace an input: the
    same path, a link to it, or a heat map named like an input (even with --overwrite)."""
    ref, test = tmp_path / "ref", tmp_path / "test"
    ref.mkdir()
    test.mkdir()
    camera = data.camera()[:32, :32]
    for name in ("q.png", "q.png.ssim.png"):  # the second is named like the first's heat map
        iio.imwrite(ref / name, camera)
        iio.imwrite(test / name, _noisy(camera, 1, 12))
    (tmp_path / "link.png").symlink_to(test / "q.png")
    os.link(ref / "q.png", tmp_path / "hard.png")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    for argv, replaced in [
        ([ref / "q.png", test / "q.png", "--output", ref / "q.png"], ref / "q.png"),
        ([ref / "q.png", test / "q.png", "--output", tmp_path / "link.png"], test / "q.png"),
        ([ref / "q.png", test / "q.png", "--output", tmp_path / "hard.png", "--overwrite"], ref / "q.png"),
        ([ref, test, "--map", ref], ref / "q.png.ssim.png"),
        ([ref, test, "--map", test, "--overwrite"], test / "q.png.ssim.png"),
    ]:
        code, out, err = _run(argv, capsys)
        assert code == 2 and out == "" and f"would replace the input {replaced}" in err, err
    maps = tmp_path / "maps"
    code, _, err = _run([ref, test, "--map", maps, "--output", maps / "q.png.ssim.png"], capsys)
    assert code == 2 and f"--map {maps / 'q.png.ssim.png'} and --output {maps / 'q.png.ssim.png'} are one file" in err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert not maps.exists()  # refused before anything was written, the folder included


def test_heat_maps_are_one_per_pair_and_replaced_only_with_overwrite(capsys, tmp_path):
    ref, test, maps = tmp_path / "ref", tmp_path / "test", tmp_path / "maps"
    camera = data.camera()[:32, :40]
    names = ["cam.png", "cam.jpg", "a/cam.png", "b/cam.png"]
    for k, name in enumerate(names):
        for folder, image in ((ref, camera), (test, _noisy(camera, k, 10 + 5 * k))):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(folder / name, image)
    code, out, _ = _run([ref, test, "--map", maps, "--format", "json"], capsys)
    assert code == 0
    values = {r["pair"]: r["ssim"] for r in map(json.loads, out.splitlines()[:-1])}
    written = {path.relative_to(maps).as_posix(): path.read_bytes() for path in maps.rglob("*.png")}
    assert set(written) == {name + ".ssim.png" for name in names}
    assert len(set(written.values())) == len(names) == len(set(values.values()))
    code, _, err = _run([ref, test, "--map", maps], capsys)  # a second run: the maps are an earlier run's
    assert code == 2 and "exists (from an earlier run?): pass --overwrite" in err
    assert {path.relative_to(maps).as_posix(): path.read_bytes() for path in maps.rglob("*.png")} == written
    assert _run([ref, test, "--map", maps, "--overwrite"], capsys)[0] == 0
    output = tmp_path / "results.csv"
    assert _run([ref, test, "--output", output], capsys)[0] == 0
    assert _run([ref, test, "--output", output], capsys)[0] == 2
    assert _run([ref, test, "--output", output, "--overwrite"], capsys)[0] == 0


def test_output_into_a_missing_folder_creates_it(folders, capsys, tmp_path):
    ref, test, _ = folders
    output = tmp_path / "new" / "deeper" / "results.csv"
    code, out, _ = _run([ref / "grey8.png", test / "grey8.png", "--format", "csv", "--output", output], capsys)
    assert code == 0 and out == "" and output.read_text().startswith("pair,ssim,dssim,error\n")


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_a_pair_whose_ssim_is_nan_is_a_failed_pair(capsys, tmp_path):
    rng = np.random.default_rng(0)
    reference = rng.random((32, 32)).astype(np.float32)
    for name, test in (("clean.tif", reference * 0.9), ("nan.tif", reference.copy())):
        iio.imwrite(tmp_path / "ref" / name if (tmp_path / "ref").exists() else _mkdir(tmp_path / "ref") / name,
                    reference)
        iio.imwrite(_mkdir(tmp_path / "test") / name, test)
    broken = iio.imread(tmp_path / "test" / "nan.tif")
    broken[5, 5] = np.nan
    iio.imwrite(tmp_path / "test" / "nan.tif", broken)
    code, out, _ = _run([tmp_path / "ref", tmp_path / "test", "--format", "json", "--data-range", "1"], capsys)
    assert code == 1
    lines = [_strict_json(line) for line in out.splitlines()]
    rows, summary = {r["pair"]: r for r in lines[:-1]}, lines[-1]["summary"]
    assert rows["nan.tif"]["ssim"] is None and rows["nan.tif"]["error"] == (
        f"SSIM is nan, not a number to report: {tmp_path / 'test' / 'nan.tif'} has 1 NaN or infinite pixel")
    assert summary["compared"] == 1 and summary["failed"] == 1
    assert [w["pair"] for w in summary["worst"]] == ["clean.tif"] and summary["min_ssim"] == rows["clean.tif"]["ssim"]
    code, out, _ = _run([tmp_path / "ref", tmp_path / "test", "--data-range", "1"], capsys)
    assert code == 1 and "1 of 2 pairs compared" in out and "nan (" not in out


def _mkdir(path):
    path.mkdir(exist_ok=True)
    return path


def test_strict_stops_at_a_pair_whose_ssim_is_nan(capsys, tmp_path):
    rng = np.random.default_rng(1)
    reference = rng.random((32, 32)).astype(np.float32)
    broken = reference.copy()
    broken[3, 4] = np.nan
    for name, test in (("a-nan.tif", broken), ("b-clean.tif", reference * 0.9)):
        iio.imwrite(_mkdir(tmp_path / "ref") / name, reference)
        iio.imwrite(_mkdir(tmp_path / "test") / name, test)
    code, out, _ = _run([tmp_path / "ref", tmp_path / "test", "--format", "csv", "--data-range", "1", "--strict"],
                        capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1 and [r["pair"] for r in rows] == ["a-nan.tif"] and rows[0]["error"].startswith("SSIM is nan")


def test_sample_covariance_is_the_metrics_option(folders, capsys):
    import cussim

    ref, test, _ = folders
    pair = [ref / "grey8.png", test / "grey8.png"]
    values = []
    for extra in ([], ["--sample-covariance"]):
        code, out, _ = _run([*pair, *extra, "--format", "csv", "--device", "cpu"], capsys)
        assert code == 0
        values.append(float(next(csv.DictReader(io.StringIO(out)))["ssim"]))
    x, y = (iio.imread(p).astype(np.float64) for p in pair)
    assert abs(values[1] - cussim.ssim(y, x, data_range=255, sample_covariance=True)) < 1e-12
    assert abs(values[1] - values[0]) > 1e-6  # the option reached the metric


def test_an_interrupt_exits_130_without_a_traceback(folders, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_imagefiles, "find_pairs", interrupted)
    ref, test, _ = folders
    assert _cli.main([str(ref), str(test), "--device", "cpu"]) == 130
    assert capsys.readouterr().err == "cussim: interrupted\n"


def test_a_multi_page_tiff_without_volumes_suggests_volumes(capsys, tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (5, 24, 24), dtype=np.uint8)
    iio.imwrite(tmp_path / "ref.tif", stack)
    iio.imwrite(tmp_path / "test.tif", stack)
    code, out, _ = _run([tmp_path / "ref.tif", tmp_path / "test.tif", "--format", "json"], capsys)
    assert code == 1
    assert "a multi-page TIFF (5 pages of 24x24) is a volume: pass --volumes" in json.loads(out.splitlines()[0])["error"]


def test_version(capsys):
    import cussim

    with pytest.raises(SystemExit) as exited:
        _cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"cussim {cussim.__version__}\n"


def test_numpy_backend_is_named_and_checked(folders, capsys, monkeypatch):
    ref, test, _ = folders
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "bogus")
    code, out, err = _run([ref / "grey8.png", test / "grey8.png"], capsys)
    assert code == 2 and out == "" and "cussim: error: CUSSIM_NUMPY_BACKEND='bogus' names no backend: set it to " \
        "one of 'reference' (cussim's NumPy reference); 'emulator' (cussim's CUDA kernels" in err
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    code, out, _ = _run([ref / "grey8.png", test / "grey8.png", "--device", "cpu"], capsys)
    assert code == 0 and out.startswith("computed by: CPU, cussim's CUDA kernels run by its CPU emulator")
    assert "NumPy reference" not in out


def test_device_gpu_without_one(folders, capsys, monkeypatch):
    ref, test, _ = folders
    monkeypatch.setattr(_pairs, "_gpu", lambda: (None, "no CUDA device"))
    code, _, err = _run([ref, test, "--device", "gpu"], capsys)
    assert code == 2 and "--device gpu: no GPU available" in err


def test_demo_writes_maps_when_asked(capsys, tmp_path):
    code, out, _ = _run(["demo", "--images", "camera", "--map", tmp_path / "maps", "--device", "cpu"], capsys)
    assert code == 0 and "computed by: CPU" in out and f"SSIM maps in {tmp_path / 'maps'}" in out
    assert len(list((tmp_path / "maps").glob("camera-*.ssim.png"))) == 5
    code, _, err = _run(["demo", "--images", "camera", "--map", tmp_path / "maps", "--device", "cpu"], capsys)
    assert code == 2 and "pass --overwrite" in err


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


def test_python_m_cussim_runs_the_command(capsys, monkeypatch):
    import cussim

    monkeypatch.setattr(sys, "argv", ["python -m cussim", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("cussim", run_name="__main__")
    assert exited.value.code == 0 and capsys.readouterr().out == f"cussim {cussim.__version__}\n"


def test_read_image_drops_alpha_narrows_wide_grey_and_names_bad_files(tmp_path):
    grey_alpha = tmp_path / "grey_alpha.npy"
    np.save(grey_alpha, np.stack([np.full((4, 5), 7, np.uint8), np.full((4, 5), 255, np.uint8)], axis=-1))
    assert np.array_equal(_imagefiles.read_image(grey_alpha), np.full((4, 5), 7, np.uint8))
    wide = tmp_path / "wide.npy"
    np.save(wide, np.full((4, 5), 65535, np.int32))
    assert _imagefiles.read_image(wide).dtype == np.uint16
    int64 = tmp_path / "int64.npy"
    np.save(int64, np.zeros((4, 5), np.int64))
    with pytest.raises(_imagefiles.ImageError, match=r"int64.npy: pixels of type int64 are not supported"):
        _imagefiles.read_image(int64)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(_imagefiles.ImageError, match=r"folder.png: cannot read the file \(Is a directory\)"):
        _imagefiles.read_image(folder)


def test_read_pair_names_a_dtype_mismatch(tmp_path):
    np.save(tmp_path / "ref.npy", np.zeros((4, 5), np.uint8))
    np.save(tmp_path / "test.npy", np.zeros((4, 5), np.float32))
    pair = _imagefiles.Pair("test.npy", tmp_path / "ref.npy", tmp_path / "test.npy")
    with pytest.raises(_imagefiles.ImageError, match=r"test.npy: float32 pixels, the reference .*ref.npy has uint8"):
        _imagefiles.read_pair(pair)
