"""Where the app's model work runs: heavy handlers on GenLab's one model thread, two models at once a core each."""

from __future__ import annotations

import functools
import inspect
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from genlab.ui.common import MODEL_THREAD, on_model_thread, run_pair


def thread_name() -> str:
    return threading.current_thread().name


def test_a_handler_runs_on_the_model_thread_and_keeps_its_signature():
    @on_model_thread
    def handler(value, progress=gr.Progress()):
        return value, thread_name()

    value, name = handler(3)
    assert value == 3 and name.startswith(MODEL_THREAD)
    assert list(inspect.signature(handler).parameters) == ["value", "progress"]  # gradio injects Progress by it
    names = []  # called from five gradio-like worker threads: always the same model thread
    callers = [threading.Thread(target=lambda: names.append(handler(0)[1])) for _ in range(5)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=10)
    assert len(names) == 5 and set(names) == {name}


def test_errors_come_back_to_the_caller_unchanged():
    @on_model_thread
    def refuses():
        raise gr.Error("Upload an image first.")

    with pytest.raises(gr.Error, match="Upload an image first."):
        refuses()
    assert on_model_thread(lambda: 1)() == 1  # the thread is still serving


def test_a_handler_calling_another_does_not_wait_for_itself():
    @on_model_thread
    def inner():
        return thread_name()

    @on_model_thread
    def outer():
        return thread_name(), inner()

    done = []
    worker = threading.Thread(target=lambda: done.append(outer()))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "a nested call deadlocked the model thread"
    assert done[0][0] == done[0][1] and done[0][0].startswith(MODEL_THREAD)


def test_a_generator_runs_each_step_on_the_model_thread_and_is_closed_there():
    seen, closed_on = [], []

    @on_model_thread
    def steps(count):
        try:
            for i in range(count):
                seen.append(thread_name())
                yield i
        finally:
            closed_on.append(thread_name())

    assert inspect.isgeneratorfunction(steps)  # gradio streams it
    assert list(steps(3)) == [0, 1, 2]
    assert all(name.startswith(MODEL_THREAD) for name in seen) and closed_on[-1].startswith(MODEL_THREAD)
    seen.clear()
    stream = steps(100)
    assert next(stream) == 0 and next(stream) == 1
    stream.close()  # what gradio does when a visitor presses Stop
    assert len(seen) == 2 and len(closed_on) == 2 and closed_on[-1].startswith(MODEL_THREAD)


def test_a_stream_finalised_on_the_model_thread_closes_there_without_waiting_for_itself():
    """The garbage collector finalises an abandoned stream on whichever thread it runs in, the model thread too
    (it hung the suite once, inside another test's diffusion sampling): the close must not queue behind itself."""
    from genlab.ui.common import _model_thread

    closed_on = []

    @on_model_thread
    def steps():
        try:
            yield 1
            yield 2
        finally:
            closed_on.append(thread_name())

    stream = steps()
    assert next(stream) == 1
    _model_thread.submit(stream.close).result(timeout=10)  # as the collector would, on the model thread
    assert len(closed_on) == 1 and closed_on[0].startswith(MODEL_THREAD)
    assert on_model_thread(lambda: 1)() == 1  # the thread is still serving


def test_a_generator_error_reaches_the_caller():
    @on_model_thread
    def fails():
        yield 1
        raise ValueError("bad step")

    stream = fails()
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad step"):
        next(stream)


def test_run_pair_runs_two_calls_at_once_on_one_intra_op_thread_each():
    default = torch.get_num_threads()
    barrier = threading.Barrier(2, timeout=10)  # passes only if both calls run at the same time

    def call(tag):
        barrier.wait()
        return tag, thread_name(), torch.get_num_threads()

    first, second = run_pair(lambda: call("a"), lambda: call("b"))
    assert first[0] == "a" and second[0] == "b"  # results in the order asked
    assert first[1] != second[1] and first[2] == second[2] == 1
    assert torch.get_num_threads() == default  # the rest of the process keeps its threads
    here = thread_name()
    assert run_pair(lambda: thread_name(), lambda: thread_name(), parallel=False) == (here, here)


def test_run_pair_passes_an_error_on():
    def fails():
        raise ValueError("first failed")

    with pytest.raises(ValueError, match="first failed"):
        run_pair(fails, lambda: 1)
    assert run_pair(lambda: 1, lambda: 2) == (1, 2)


def test_a_lane_waiting_for_tokens_gets_the_encoders_error(tiny_vq):
    """Two lanes sharing one encoding (genlab.ui.reconstruct_tab.run_lane): when the encoding fails, the waiting
    lane raises the same error instead of waiting for ever."""
    from genlab.ui.reconstruct_tab import run_lane

    class Broken:
        def encode_image(self, image, max_side):
            raise RuntimeError("encoder failed")

    image, tokens = Image.new("RGB", (8, 8)), Future()
    pool = ThreadPoolExecutor(1)
    try:
        waiting = pool.submit(run_lane, tiny_vq, "tiny", image, 64, "compare_", with_jpeg=True, tokens=tokens)
        with pytest.raises(RuntimeError, match="encoder failed"):
            run_lane(Broken(), "broken", image, 64, share=tokens)
        with pytest.raises(RuntimeError, match="encoder failed"):
            waiting.result(timeout=10)
    finally:
        if not tokens.done():  # so a regression fails here instead of hanging the run at exit
            tokens.set_exception(RuntimeError("the lane never passed its encoding on"))
        pool.shutdown(wait=False)


@pytest.mark.parametrize("parallel", [True, False])
def test_lanes_share_one_encoding_at_once_and_in_turn(tiny_vq, parallel):
    """run_pair in turn (a GPU) runs the encoding lane first, so the waiting lane never blocks it."""
    from genlab.ui.reconstruct_tab import run_lane

    image, tokens = Image.new("RGB", (12, 10), (200, 40, 90)), Future()
    first = functools.partial(run_lane, tiny_vq, "a", image, 64, share=tokens)
    second = functools.partial(run_lane, tiny_vq, "b", image, 64, "compare_", with_jpeg=True, tokens=tokens)
    main, compare = run_pair(first, second, parallel=parallel)
    assert tokens.result(timeout=0) is not None and main.jpeg is None and compare.jpeg is not None
    assert np.array_equal(main.result.indices, compare.result.indices)
