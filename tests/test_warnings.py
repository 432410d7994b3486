"""A float image in 0..255 without data_range is a documented trap: the native API warns, once per call site."""

import warnings

import numpy as np
import pytest

import cussim

RNG = np.random.default_rng(0)
IN_0_255 = RNG.random((2, 24, 24)) * 255


def _caught(call):
    """The warnings ``call()`` raises under Python's default filter (once per call site)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        call()
    return caught


@pytest.mark.parametrize("function", [cussim.ssim, cussim.dssim, cussim.ssim_map, cussim.ssim_with_gradient,
                                      cussim.l1_dssim_loss])
def test_a_float_image_outside_the_unit_range_warns_at_the_callers_line(function):
    (warning,) = _caught(lambda: function(IN_0_255, IN_0_255 * 0.9))
    assert warning.category is cussim.DataRangeWarning and issubclass(warning.category, UserWarning)
    assert warning.filename == __file__  # the user's line, not cussim's
    assert "far outside [0, 1] (beyond -2 or 2) and no data_range was given" in str(warning.message)
    assert "pass data_range=255 for images in 0..255" in str(warning.message)


def test_ms_ssim_warns_too_and_the_test_image_is_looked_at():
    big = RNG.random((1, 176, 176))
    (warning,) = _caught(lambda: cussim.ms_ssim(big, big * 200))
    assert warning.filename == __file__ and str(warning.message).startswith("y has values far outside")


def test_once_per_call_site():
    def calls():
        for k in range(3):
            cussim.ssim(IN_0_255 * (k + 1), IN_0_255)
        cussim.ssim(IN_0_255, IN_0_255)  # another line: warned again

    caught = _caught(calls)
    assert len(caught) == 2 and len({w.lineno for w in caught}) == 2


@pytest.mark.parametrize("x, options", [
    (IN_0_255, dict(data_range=255)),  # the fix
    (IN_0_255 / 255, {}),  # [0, 1]
    (IN_0_255 / 127.5 - 1, {}),  # [-1, 1]
    (IN_0_255 / 200 - 0.1, {}),  # a render that overshoots [0, 1] a little
    (IN_0_255.astype(np.uint8), {}),  # integers have their dtype's range
])
def test_no_warning_where_the_range_is_right(x, options):
    assert _caught(lambda: cussim.ssim(x, x, **options)) == []


def test_a_workspace_looks_at_no_values():
    assert _caught(lambda: cussim.make_workspace(IN_0_255.astype(np.float32))) == []


def test_the_torch_functions_warn_at_the_callers_line():
    torch = pytest.importorskip("torch")
    import cussim.torch as ct

    x = torch.from_numpy(IN_0_255).requires_grad_()
    (warning,) = _caught(lambda: ct.ssim(x, x.detach() * 0.9).backward())
    assert warning.category is cussim.DataRangeWarning and warning.filename == __file__
