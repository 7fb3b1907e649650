"""Audio to text for any model that stands in for ``whisper.Whisper``: PyTorch's or MAX's.

Kept apart from the MAX model (``max_whisper``) so that PyTorch's path imports no MAX: the
``transcribe`` command runs once per file, and importing MAX and the MAX model took ~0.15 s of
each PyTorch first transcript.
"""
