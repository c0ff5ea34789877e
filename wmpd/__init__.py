"""wmpd, the "Where's My Pic" daemon: local, offline semantic image search."""

__version__ = "0.1.0"
