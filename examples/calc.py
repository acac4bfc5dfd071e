"""A module to serve from the command line.

    rapidrpc serve examples.calc --port 8000          # its public functions
    rapidrpc serve examples/calc.py:Calculator        # a class's methods (path form)
    rapidrpc call 127.0.0.1:8000 add 2 3              # -> 5
    rapidrpc methods 127.0.0.1:8000

Only functions defined here are served: ``sqrt`` (imported) and ``_scale`` (private) are not.
"""

import time
from math import sqrt


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def hypot(a: float, b: float) -> float:
    """Length of the hypotenuse of a right triangle with sides a and b."""
    return sqrt(_scale(a) + _scale(b))


def echo(data: bytes) -> bytes:
    """Return the bytes unchanged."""
    return data


def slow(seconds: float) -> float:
    """Sleep, then return how long (blocks this server process: keep it short)."""
    time.sleep(seconds)
    return seconds


def _scale(x: float) -> float:
    return x * x


class Calculator:
    """A stateful service: ``rapidrpc serve examples.calc:Calculator``."""

    def __init__(self) -> None:
        self.memory = 0.0

    def add(self, a: float, b: float) -> float:
        """Add two numbers and remember the result."""
        self.memory = a + b
        return self.memory

    def recall(self) -> float:
        """The last result."""
        return self.memory

    def _reset(self) -> None:  # private: never callable remotely
        self.memory = 0.0
