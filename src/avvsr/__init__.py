"""avvsr: audio-visual video super-resolution.

Sub-packages are imported lazily by their users; importing ``avvsr`` imports nothing heavy.
"""

__version__ = "0.1.0"
