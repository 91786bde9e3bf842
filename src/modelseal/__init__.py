"""modelseal: protect and prove ownership of large vision models.

Tasks: ``lock`` (IP-CLIP), ``watermark`` (SleeperMark), ``audit`` (CGI-DM).
"""

__version__ = "0.1.0"
