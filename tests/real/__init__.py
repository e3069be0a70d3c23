"""Tests against the real cads-mars-server, with a stand-in MARS."""
