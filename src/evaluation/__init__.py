"""Scoring at the images' original size: a split evaluated (``evaluate``), surface distances,
volumes, competition scores, agreement statistics and the records written from a result.

Shared by ``src.eval`` and the test after ``src.train``'s fit; the network itself comes from
``src.inference``."""
