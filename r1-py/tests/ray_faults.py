"""Faults for the Ray tests, shipped to the workers by value (see test_ray.py)."""

import os

from r1py.ray import Predictor


class CrashingOnce(Predictor):
    """A Predictor whose process dies (``os._exit``, no cleanup, as a segfault or an OOM kill
    would) on its first batch, once per marker file: the restarted actor then runs normally."""

    def __init__(self, spec, *, marker, **kwargs):
        super().__init__(spec, **kwargs)
        self._marker = marker

    def __call__(self, batch):
        try:
            fd = os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(batch)
        os.close(fd)
        os._exit(1)
