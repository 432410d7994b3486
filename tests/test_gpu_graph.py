"""A call into preallocated buffers can be captured in a CUDA graph: it allocates nothing and never
synchronises, and the replayed graph computes what the call computes (on a GPU, and on the CuPy stand-in)."""

import numpy as np

import cussim


def test_in_place_gradient_call_is_captured_and_replayed_in_a_cuda_graph(gpu_cupy):
    cupy = gpu_cupy
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.random((2, 3, 70, 90), dtype=np.float32), blocking=True)
    y = cupy.asarray(rng.random((2, 3, 70, 90), dtype=np.float32), blocking=True)
    out, grad = cupy.empty((), cupy.float32), cupy.empty(x.shape, cupy.float32)
    workspace = cussim.make_workspace(x)
    call = lambda: cussim.dssim_with_gradient(x, y, data_range=1.0, out=out, grad=grad, workspace=workspace)  # noqa: E731
    call()  # the first call compiles the kernels and makes the constants and plans
    expected_out, expected_grad = out.copy(), grad.copy()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        call()
        graph = stream.end_capture()
    out.fill(np.nan)
    grad.fill(np.nan)
    graph.launch(stream)
    stream.synchronize()
    assert bool(out == expected_out) and bool((grad == expected_grad).all())
    # the graph reads the buffers' current contents: new images, new result
    x[...] = y
    graph.launch(stream)
    stream.synchronize()
    assert float(out) == 0.0 and not bool(cupy.isnan(grad).any())
