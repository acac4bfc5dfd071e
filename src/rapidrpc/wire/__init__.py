"""Bytes only: serializer and framing, each with a Cython and a pure-Python twin."""
